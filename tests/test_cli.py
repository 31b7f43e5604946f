"""Every CLI verb, run as a user would: a subprocess against a real server in a temp home."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version as package_version
from pathlib import Path

import httpx
import pytest

from lmserve import __version__
from lmserve.models.default import GEMMA3_270M
from tests.conftest import (
    GEMMA_ID,
    MODEL_ID,
    free_port,
    install_default_model,
    install_model,
    run_cli,
)


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path, gemma_model_file: Path
) -> Path:
    home = tmp_path_factory.mktemp("cli-home")
    install_default_model(home, default_model_file)
    install_model(home, gemma_model_file, GEMMA3_270M)
    return home


@pytest.fixture(scope="module")
def background_server(home: Path) -> Iterator[int]:
    """``lmserve server start`` in the temp home; stopped with ``server stop``."""
    port = free_port()
    started = run_cli(home, "server", "start", "--port", str(port), timeout=300)
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        yield port
    finally:
        run_cli(home, "server", "stop")


def test_ls_lists_downloaded_models(home: Path) -> None:
    result = run_cli(home, "ls")
    assert result.returncode == 0
    assert MODEL_ID in result.stdout and GEMMA_ID in result.stdout
    assert "Q4_1" in result.stdout and "Q4_K_M" in result.stdout
    assert "You have 2 models" in result.stdout
    listed = json.loads(run_cli(home, "ls", "--json").stdout)
    by_key = {item["key"]: item for item in listed}
    assert by_key[MODEL_ID]["architecture"] == "llama"
    assert by_key[GEMMA_ID]["architecture"] == "gemma3"
    assert by_key[GEMMA_ID]["max_context_length"] == 32768
    assert by_key[MODEL_ID]["size_bytes"] == 98_362_432
    assert json.loads(run_cli(home, "ls", "--embedding", "--json").stdout) == []
    assert len(json.loads(run_cli(home, "ls", "--llm", "--json").stdout)) == 2


def test_ls_in_an_empty_home_says_how_to_get_a_model(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "ls")
    assert result.returncode == 0
    assert "lmserve get" in result.stdout


def test_client_verbs_without_a_server_say_how_to_start_it(home: Path) -> None:
    for verb in (["ps"], ["load", MODEL_ID], ["unload", "--all"], ["chat", "-p", "hi"]):
        result = run_cli(home, *verb, "--port", str(free_port()))
        assert result.returncode != 0, verb
        assert "lmserve server start" in result.stderr, verb
        assert "Traceback" not in result.stderr


def test_version_names_the_packages(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"lmserve {__version__}"
    assert lines[1] == f"llama-cpp-python {package_version('llama-cpp-python')}"
    assert lines[2].startswith("GPU offload: ")


def test_server_status_start_stop(home: Path, background_server: int) -> None:
    status = json.loads(run_cli(home, "server", "status", "--json").stdout)
    assert status["running"] is True and status["port"] == background_server
    assert status["models"] == [MODEL_ID]
    pid = status["pid"]
    assert pid and Path(f"/proc/{pid}").exists()
    # `lmserve status`, as `lms status`, says the same.
    assert json.loads(run_cli(home, "status", "--json").stdout) == status
    again = run_cli(home, "server", "start", "--port", str(background_server))
    assert "already running" in again.stdout
    assert (home / "logs" / "server.log").exists()


def test_ps_load_unload(home: Path, background_server: int) -> None:
    ps = json.loads(run_cli(home, "ps", "--json").stdout)
    assert [item["identifier"] for item in ps] == [MODEL_ID]
    loaded = run_cli(
        home,
        "load",
        "gemma",
        "-y",
        "--identifier",
        "g2",
        "--ttl",
        "600",
        "--context-length",
        "2048",
        "--parallel",
        "2",
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "Model loaded: g2" in loaded.stdout
    instances = {
        item["identifier"]: item for item in json.loads(run_cli(home, "ps", "--json").stdout)
    }
    assert instances["g2"]["model"] == GEMMA_ID
    assert instances["g2"]["context_length"] == 2048
    assert instances["g2"]["slots"] == 2
    assert instances["g2"]["ttl"] == 600 and 590 < instances["g2"]["ttl_remaining"] <= 600
    table = run_cli(home, "ps").stdout
    assert "g2" in table and "TTL LEFT" in table
    # The loaded instance answers under its identifier.
    answer = httpx.post(
        f"http://127.0.0.1:{background_server}/v1/completions",
        json={"model": "g2", "prompt": "The capital of France is", "max_tokens": 5},
        timeout=120,
    )
    assert answer.status_code == 200 and answer.json()["model"] == "g2"
    unloaded = run_cli(home, "unload", "g2")
    assert unloaded.returncode == 0 and "Unloaded g2" in unloaded.stdout
    assert "g2" not in run_cli(home, "ps").stdout
    missing = run_cli(home, "unload", "nope")
    assert missing.returncode != 0 and MODEL_ID in missing.stderr


def test_load_unknown_model_lists_close_matches(home: Path, background_server: int) -> None:
    result = run_cli(home, "load", "m")  # matches both models: say which, load neither
    assert result.returncode != 0
    assert MODEL_ID in result.stderr and GEMMA_ID in result.stderr and "-y" in result.stderr
    unique = run_cli(home, "load", "smollm")  # one close match: that one
    assert unique.returncode == 0 and f"Model loaded: {MODEL_ID}" in unique.stdout
    nothing = run_cli(home, "load", "llama-70b-nonexistent")
    assert nothing.returncode != 0 and "no downloaded model matches" in nothing.stderr
    assert "Traceback" not in result.stderr + nothing.stderr


def test_chat_with_a_prompt_and_from_stdin(home: Path, background_server: int) -> None:
    once = run_cli(home, "chat", MODEL_ID, "-p", "What is 2+2?", "-s", "Be brief.", "--stats")
    assert once.returncode == 0, once.stderr
    assert once.stdout.strip()
    assert "tok/s" in once.stderr and "stop:" in once.stderr
    piped = run_cli(home, "chat", MODEL_ID, input="Name a color.\n")
    assert piped.returncode == 0 and piped.stdout.strip()


def _read_until(fd: int, marker: str, timeout: float = 60.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096).decode(errors="replace")
            except OSError:
                break
    return seen


def test_interactive_chat_keeps_history(home: Path, background_server: int) -> None:
    log = subprocess.Popen(
        [sys.executable, "-m", "lmserve", "log", "stream", "--json"],
        env={**os.environ, "LMSERVE_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert log.stderr is not None and "Streaming logs" in log.stderr.readline()
    leader, follower = pty.openpty()
    chat = subprocess.Popen(
        [sys.executable, "-m", "lmserve", "chat", MODEL_ID],
        env={**os.environ, "LMSERVE_HOME": str(home)},
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    try:
        assert "> " in _read_until(leader, "> ")
        os.write(leader, b"My name is Zorblax.\n")
        _read_until(leader, "> ")
        os.write(leader, b"What is my name?\n")
        _read_until(leader, "> ")
        os.write(leader, b"/exit\n")
        assert chat.wait(30) == 0
    finally:
        chat.kill()
        os.close(leader)
        os.close(follower)
        log.terminate()
    records = [json.loads(line) for line in log.communicate(timeout=10)[0].splitlines()]
    prompts = [r["prompt"] for r in records if r["type"] == "llm.prediction.input"]
    assert len(prompts) == 2
    # The second turn carries the first exchange: history was kept.
    assert "Zorblax" in prompts[1] and prompts[1].count("<|im_start|>user") == 2
    assert prompts[1].count("<|im_start|>assistant") == 2


def test_server_stop_ends_the_process(tmp_path: Path, default_model_file: Path) -> None:
    install_default_model(tmp_path, default_model_file)
    port = free_port()
    assert run_cli(tmp_path, "server", "start", "--port", str(port), timeout=300).returncode == 0
    pid = json.loads(run_cli(tmp_path, "server", "status", "--json").stdout)["pid"]
    stopped = run_cli(tmp_path, "server", "stop")
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    status = run_cli(tmp_path, "server", "status")
    assert "not running" in status.stdout
    assert "not running" in run_cli(tmp_path, "server", "stop").stdout
