"""Vision projectors: the ``mmproj`` GGUF files that let a model see.

LM Studio keeps a vision model as two files in one folder: the model's GGUF and its projector
(``mmproj-*.gguf``), which turns images into the model's embeddings.  A projector is never a
model of its own: the catalog lists the model and gives it the folder's projector, and the
model's worker loads both.

Which file is a projector: its header says so (``general.type`` is ``mmproj``, as llama.cpp's
converter writes it, or it has a ``clip.projector_type`` or ``clip.has_vision_encoder`` key, as
older conversions do); a file whose header cannot be read is one if its name starts with
``mmproj``.

Which projector a model takes when its folder holds several (:func:`choose_projector`): the
one whose name states the model's own quantization, else F16, else BF16, else F32, else any
other; among equals, the first by name.  ``lmserve get`` picks among a repository's projectors
by the same rule.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from lmserve.models.gguf import GGUFError, GGUFHeader, read_header

PROJECTOR_PREFIX = "mmproj"
_HEADER_KEYS = ("clip.projector_type", "clip.has_vision_encoder")
# Preferred when no projector states the model's quantization, in this order.
_FLOAT_ORDER = (("F16", "FP16"), ("BF16",), ("F32", "FP32"))


class ProjectorError(ValueError):
    """A file given as a projector is missing or is not one; the message is fit for users."""


def is_projector_header(header: GGUFHeader) -> bool:
    metadata = header.metadata
    return metadata.get("general.type") == "mmproj" or any(key in metadata for key in _HEADER_KEYS)


def is_projector_name(name: str) -> bool:
    """What the name says, for a file whose header cannot be read."""
    return PurePosixPath(name).name.lower().startswith(PROJECTOR_PREFIX)


def is_projector_file(path: Path) -> bool:
    """Whether ``path`` is a projector: by its header, or by its name if that is unreadable."""
    try:
        header = read_header(path)
    except (GGUFError, OSError):
        return is_projector_name(path.name)
    return is_projector_header(header)


def _states(name: str, label: str) -> bool:
    """Whether the file name states the quantization ``label`` (``Q8_0``, ``F16``...)."""
    stem = PurePosixPath(name).name
    pattern = rf"(?<![A-Za-z0-9]){re.escape(label)}(?![A-Za-z0-9_])"
    return re.search(pattern, stem, re.IGNORECASE) is not None


def _rank(name: str, quantization: str | None) -> tuple[int, str, str]:
    base = PurePosixPath(name).name
    if quantization and _states(base, quantization):
        order = 0
    else:
        floats = [any(_states(base, label) for label in labels) for labels in _FLOAT_ORDER]
        order = 1 + (floats.index(True) if True in floats else len(floats))
    return (order, base.lower(), name)


def choose_projector(names: Iterable[str], quantization: str | None) -> str | None:
    """The projector a model of ``quantization`` takes among ``names`` (file names or paths),
    by the rule in this module's docstring; None when there are none."""
    return min(names, key=lambda name: _rank(name, quantization), default=None)


def check_projector(path: str | os.PathLike[str]) -> Path:
    """The absolute path of a projector a user named (``--mmproj``, a load's ``mmproj``);
    :class:`ProjectorError` if it is missing, not a file, or not a projector."""
    given = Path(path).expanduser()
    absolute = Path(os.path.abspath(given))
    if not absolute.exists():
        raise ProjectorError(f"{given} does not exist")
    if not absolute.is_file():
        raise ProjectorError(f"{given} is not a file")
    try:
        header = read_header(absolute)
    except GGUFError as exc:
        raise ProjectorError(f"{given} is not a GGUF file ({exc})") from None
    except OSError as exc:
        raise ProjectorError(f"cannot read {given}: {exc.strerror or exc}") from None
    if not is_projector_header(header):
        raise ProjectorError(
            f"{given} is not a vision projector (mmproj): its header names no projector "
            f"(architecture {header.architecture!r})"
        )
    return absolute
