"""Files of the llama.cpp that llama-cpp-python vendors, read from its source distribution.

Some tests check lmserve against llama.cpp's own test data (its JSON-schema corpus).  The
sdist is fetched once from PyPI (``pip download --no-binary``) into a cache outside the
repository, as the SDK tests fetch their packages, and read without unpacking.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmserve-tests" / "sdist"


def sdist() -> Path:
    """The installed llama-cpp-python's source distribution, downloaded if not cached."""
    version = metadata.version("llama-cpp-python")
    folder = _cache()
    found = sorted(folder.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={version}",
            "--dest",
            str(folder),
        ],
        check=True,
        timeout=900,
    )
    return next(folder.glob(f"llama_cpp_python-{version}.tar.gz"))


def vendored_file(path: str) -> str:
    """The text of ``vendor/llama.cpp/<path>`` in the sdist."""
    with tarfile.open(sdist()) as archive:
        for member in archive.getmembers():
            if member.name.endswith(f"/vendor/llama.cpp/{path}"):
                extracted = archive.extractfile(member)
                assert extracted is not None
                return extracted.read().decode("utf-8")
    raise FileNotFoundError(f"vendor/llama.cpp/{path} is not in {sdist()}")
