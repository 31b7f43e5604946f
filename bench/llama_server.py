"""llama.cpp's own ``llama-server``, built from the llama.cpp inside the pinned llama-cpp-python.

The same source as lmserve's engine, so both run the same kernels: any difference between
them is the serving around the kernels.  Built once (about 6 minutes on 2 cores) into a cache
outside the repository (``$LMSERVE_BENCH_CACHE``, else ``~/.cache/lmserve-bench``), then reused.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

import harness


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The llama.cpp settings a bench gives both servers alike: ``--repack``,
    ``--flash-attention``."""
    parser.add_argument(
        "--repack",
        choices=["on", "off"],
        default="off",
        help="llama.cpp's weight repacking on both (off works on every CPU, AMX included)",
    )
    parser.add_argument(
        "--flash-attention",
        choices=["auto", "on", "off"],
        default="auto",
        help="on both; auto: llama.cpp's choice in each",
    )


def cache_dir() -> Path:
    configured = os.environ.get("LMSERVE_BENCH_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "lmserve-bench"


def _run(command: list[str], **kwargs: object) -> None:
    print("  $ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def build(version: str | None = None, rpc: bool = False) -> Path:
    """The path of ``llama-server`` for llama-cpp-python ``version`` (the installed one by
    default), building it first if the cache does not have it; ``rpc``: a build with the RPC
    backend (``--rpc``), in a folder of its own."""
    version = version or metadata.version("llama-cpp-python")
    root = cache_dir() / f"llama-server-{version}"
    build_dir = root / ("build-rpc" if rpc else "build")
    binary = build_dir / "bin" / "llama-server"
    if binary.exists():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    print(f"building llama-server from llama-cpp-python {version}'s sdist into {root}", flush=True)
    sdist = root / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                str(root),
            ]
        )
    source = root / f"llama_cpp_python-{version}"
    if not source.exists():
        with tarfile.open(sdist) as archive:
            archive.extractall(root, filter="data")
    llama_cpp = source / "vendor" / "llama.cpp"
    _run(
        [
            "cmake",
            "-S",
            str(llama_cpp),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_OPENSSL=OFF",
            f"-DGGML_RPC={'ON' if rpc else 'OFF'}",
        ]
    )
    _run(
        [
            "cmake",
            "--build",
            str(build_dir),
            "-j",
            str(os.cpu_count() or 2),
            "--target",
            "llama-server",
        ]
    )
    return binary


@contextlib.contextmanager
def running(
    binary: Path,
    parallel: int,
    context_per_slot: int,
    repack: bool,
    flash_attention: str = "auto",
    model: str = "smollm2",
    extra: Sequence[str] = (),
    path: Path | None = None,
) -> Iterator[harness.RunningServer]:
    """llama-server on ``model`` (one of ``harness.MODELS``; served under that name) with
    lmserve's settings: ``parallel`` slots of ``context_per_slot`` tokens each (``-c`` is
    their total), the same threads for prompts and generation, and the same repack setting;
    ``flash_attention`` is its ``-fa``; ``extra``: further flags (``--mmproj PATH``);
    ``path``: a GGUF to serve under the name ``model`` instead of one of ``harness.MODELS``."""
    port = harness.free_port()
    command = [
        str(binary),
        "--model",
        str(path or harness.model_path(model)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "--ctx-size",
        str(parallel * context_per_slot),
        "--threads",
        str(harness.threads()),
        "--threads-batch",
        str(harness.threads()),
        "--alias",
        model,
        "--flash-attn",
        flash_attention,
    ]
    if not repack:
        command.append("--no-repack")
    command.extend(extra)
    with harness.started("llama-server", command, port, model) as server:
        yield server
