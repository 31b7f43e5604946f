"""Add a GGUF file from disk to the models folder, as ``lms import`` does.

The file lands at ``models/<publisher>/<repo>/<file name>``: moved there by default, or copied,
symlinked or hard-linked.  Nothing is overwritten, and a copy appears under its final name
only once complete (it is written to a temporary file in the target folder, then renamed).

A vision model's projector (``mmproj``) comes in with it, in the same way, into the same
folder: first, so that the model appears with it; if the model then fails, the projector's
import is undone.  A projector is never imported as a model of its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmserve.models.catalog import model_key
from lmserve.models.gguf import GGUFError, read_header
from lmserve.models.projectors import ProjectorError, check_projector, is_projector_header

ImportMode = Literal["move", "copy", "symlink", "hardlink"]
IMPORT_MODES: tuple[ImportMode, ...] = ("move", "copy", "symlink", "hardlink")
DEFAULT_PUBLISHER = "local"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERBS = {
    "move": ("Move", "Moved"),
    "copy": ("Copy", "Copied"),
    "symlink": ("Symlink", "Symlinked"),
    "hardlink": ("Hard-link", "Hard-linked"),
}


class ModelImportError(Exception):
    """The file cannot be imported; the message is fit for users."""


@dataclass(frozen=True)
class ImportPlan:
    source: Path
    target: Path
    mode: ImportMode
    # The model's vision projector, imported the same way beside it.
    mmproj: ImportPlan | None = None

    @property
    def publisher(self) -> str:
        return self.target.parent.parent.name

    @property
    def repo(self) -> str:
        return self.target.parent.name

    def describe(self, *, done: bool = False) -> str:
        """``Move a -> b`` (or ``Moved a -> b`` once done), a line more for a projector."""
        verb = _VERBS[self.mode][1 if done else 0]
        line = f"{verb} {self.source} -> {self.target}"
        return line if self.mmproj is None else f"{line}\n{self.mmproj.describe(done=done)}"


def parse_user_repo(value: str) -> tuple[str, str]:
    """``publisher/repo`` → ``(publisher, repo)``; refuses paths, ``..`` and odd characters."""
    parts = value.strip().split("/")
    if len(parts) != 2:
        raise ModelImportError(
            f"{value!r} is not publisher/repo (exactly two names separated by one '/')"
        )
    for part in parts:
        if not _NAME.match(part) or ".." in part:
            raise ModelImportError(
                f"{value!r}: {part!r} is not a valid name (start with a letter or digit; then "
                "letters, digits, '.', '_' and '-' only)"
            )
    return parts[0], parts[1]


def default_user_repo(file_name: str) -> str:
    """Where a file goes when nobody says: ``local/<model key>-GGUF``."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "-", model_key(file_name)).strip("._-")
    key = re.sub(r"\.{2,}", ".", key)
    return f"{DEFAULT_PUBLISHER}/{key or 'model'}-GGUF"


def plan_import(
    source: Path,
    *,
    models_root: Path,
    mode: ImportMode = "move",
    user_repo: str | None = None,
    mmproj: Path | None = None,
) -> ImportPlan:
    """Check ``source`` (and its vision projector ``mmproj``, if given) and the destination;
    change nothing.  Raises :class:`ModelImportError`."""
    if mode not in IMPORT_MODES:
        raise ModelImportError(f"unknown import mode {mode!r}")
    source = Path(os.path.abspath(source.expanduser()))
    if not source.exists():
        raise ModelImportError(f"{source} does not exist")
    if not source.is_file():
        raise ModelImportError(f"{source} is not a file")
    if not source.name.lower().endswith(".gguf"):
        raise ModelImportError(f"{source.name} is not a .gguf file")
    try:
        header = read_header(source)
    except GGUFError as exc:
        raise ModelImportError(f"{source} is not a valid GGUF file: {exc}") from exc
    except OSError as exc:
        raise ModelImportError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if is_projector_header(header):
        raise ModelImportError(
            f"{source.name} is a vision projector, not a model: import its model with "
            f"--mmproj {source}"
        )
    publisher, repo = parse_user_repo(
        default_user_repo(source.name) if user_repo is None else user_repo
    )
    target = models_root / publisher / repo / source.name
    if os.path.lexists(target):
        raise ModelImportError(f"{target} already exists; not overwriting it")
    projector = None
    if mmproj is not None:
        try:
            mmproj = check_projector(mmproj)
        except ProjectorError as exc:
            raise ModelImportError(f"--mmproj: {exc}") from None
        beside = target.parent / mmproj.name
        if beside == target:
            raise ModelImportError(f"the model and its projector are both named {mmproj.name}")
        if os.path.lexists(beside):
            raise ModelImportError(f"{beside} already exists; not overwriting it")
        projector = ImportPlan(source=mmproj, target=beside, mode=mode)
    return ImportPlan(source=source, target=target, mode=mode, mmproj=projector)


def run_import(plan: ImportPlan) -> Path:
    """Carry out ``plan``; returns the imported file's path."""
    folder = plan.target.parent
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    projector_done = False
    try:
        if plan.mmproj is not None:
            _ACTIONS[plan.mode](plan.mmproj.source, plan.mmproj.target)
            projector_done = True
        _ACTIONS[plan.mode](plan.source, plan.target)
    except BaseException:
        if projector_done:
            assert plan.mmproj is not None
            _undo(plan.mmproj)
        if created:  # leave no empty folder behind a failed import
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return plan.target


def _undo(plan: ImportPlan) -> None:
    """Take back a done import: a moved file goes back where it was, anything else goes."""
    with contextlib.suppress(OSError, ModelImportError):
        if plan.mode == "move" and not os.path.lexists(plan.source):
            _move(plan.target, plan.source)
        else:
            plan.target.unlink()


def _move(source: Path, target: Path) -> None:
    _refuse_existing(target)
    if source.is_symlink():
        # Keep what the link points to, wherever the link now lives.
        os.symlink(source.resolve(), target)
        source.unlink()
        return
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise ModelImportError(f"cannot move {source}: {exc.strerror or exc}") from exc
        _copy(source, target)  # another file system: copy, then remove the original
        source.unlink()


def _copy(source: Path, target: Path) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as sink, source.open("rb") as reader:
            shutil.copyfileobj(reader, sink, 1 << 20)
            sink.flush()
            os.fsync(sink.fileno())
        shutil.copymode(source, temporary)
        _refuse_existing(target)
        os.replace(temporary, target)
    except OSError as exc:
        raise ModelImportError(f"cannot copy {source}: {exc.strerror or exc}") from exc
    finally:
        Path(temporary).unlink(missing_ok=True)


def _symlink(source: Path, target: Path) -> None:
    try:
        os.symlink(source.resolve(), target)
    except OSError as exc:
        raise ModelImportError(f"cannot create a symlink at {target}: {exc.strerror}") from exc


def _hardlink(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise ModelImportError(
                f"cannot hard-link {source} into {target.parent}: they are on different file "
                "systems; use --copy or --symlink"
            ) from exc
        raise ModelImportError(f"cannot hard-link {source}: {exc.strerror or exc}") from exc


def _refuse_existing(target: Path) -> None:
    if os.path.lexists(target):
        raise ModelImportError(f"{target} already exists; not overwriting it")


_ACTIONS = {"move": _move, "copy": _copy, "symlink": _symlink, "hardlink": _hardlink}
