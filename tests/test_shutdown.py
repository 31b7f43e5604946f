"""Lifecycle: /health while loading, SIGTERM drains, the drain timeout, a second signal."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmserve.models.default import GEMMA3_270M
from tests.conftest import (
    GEMMA_ID,
    MODEL_ID,
    Server,
    install_default_model,
    install_model,
    start_server,
)

# Long answers: end of text banned, so the model writes until max_tokens.
NO_EOS = {"2": -100, "0": -100}
LONG = {
    "model": MODEL_ID,
    "messages": [{"role": "user", "content": "Count to a thousand."}],
    "logit_bias": NO_EOS,
}


def children_of(pid: int) -> set[int]:
    """Child processes of ``pid`` (Linux: every thread's children file)."""
    found: set[int] = set()
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.exists():
        return found
    for task in tasks.iterdir():
        try:
            found |= {int(child) for child in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: its parent has not reaped it yet.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def wait_exit(server: Server, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    code = server.process.wait(timeout)
    return code, time.monotonic() - started


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path: Path, default_model_file: Path):
    home = tmp_path / "home"
    install_default_model(home, default_model_file)
    server = start_server(home, "--drain-timeout", "60")
    try:
        with (
            httpx.Client(base_url=server.base_url, timeout=120) as http,
            http.stream("GET", "/lmserve/log/stream") as log_stream,
        ):
            records = log_stream.iter_lines()
            assert next(records) == ": subscribed"  # before the request, so its prompt is seen
            with http.stream(
                "POST", "/v1/chat/completions", json={**LONG, "max_tokens": 400, "stream": True}
            ) as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("data: ")  # generating now
                children = children_of(server.process.pid)
                sent = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                # New work is refused while the stream goes on; /health says so.
                with httpx.Client(base_url=server.base_url, timeout=10) as other:
                    deadline = time.monotonic() + 10
                    while (health := other.get("/health")).status_code == 200:
                        assert time.monotonic() < deadline, "SIGTERM did not start the drain"
                        time.sleep(0.01)
                    refused = other.post("/v1/chat/completions", json={**LONG, "max_tokens": 2})
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "shutting_down"
                assert refused.json()["error"]["type"] == "server_error"
                assert health.status_code == 503 and health.json()["status"] == "shutting_down"
                assert server.process.poll() is None  # still draining
                # A log stream never ends by itself; the drain ends it rather than wait on it.
                assert [line for line in records if line.startswith("data: ")]  # the prompt
                rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in rest[:-1]]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] == "length"  # the whole answer, not cut short
        code, waited = wait_exit(server, 15)
        drain_seconds = time.monotonic() - sent
    finally:
        server.stop()
    assert code == 0
    assert waited < 5  # it exits as soon as the drain is over
    assert not [pid for pid in children if alive(pid)]
    log = server.log()
    assert "waiting up to 60 s for 1 request(s)" in log
    assert "Traceback" not in log
    print(f"drained one 150-token stream in {drain_seconds:.2f} s")


def test_drain_timeout_stops_what_is_left(tmp_path: Path, default_model_file: Path) -> None:
    home = tmp_path / "home"
    install_default_model(home, default_model_file)
    server = start_server(home, "--drain-timeout", "1")
    outcome: dict[str, Any] = {}

    def long_request() -> None:
        try:
            outcome["response"] = httpx.post(
                f"{server.api_url}/chat/completions", json={**LONG, "max_tokens": 3000}, timeout=60
            )
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=long_request)
    try:
        worker.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            slots = httpx.get(f"{server.base_url}/lmserve/slots").json()["models"][0]["slots"]
            if any(slot["busy"] for slot in slots):
                break
            time.sleep(0.05)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code, _ = wait_exit(server, 20)
        took = time.monotonic() - started
        worker.join(30)
    finally:
        server.stop()
    assert code == 0
    assert 0.9 < took < 6  # the 1 s drain, then a prompt stop; not the 3,000 tokens
    # The client got an answer saying why, not a hang.
    response = outcome.get("response")
    assert response is not None, outcome
    # 503: the server went away, which a client may retry elsewhere (not a 500 bug).
    assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
    assert "shutting down" in response.json()["error"]["message"]
    assert "drain timeout" in server.log()
    print(f"drain timeout 1 s: exited {took:.2f} s after SIGTERM")


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path, default_model_file: Path) -> None:
    home = tmp_path / "home"
    install_default_model(home, default_model_file)
    server = start_server(home, "--drain-timeout", "120")
    try:
        with (
            httpx.Client(base_url=server.base_url, timeout=60) as http,
            http.stream(
                "POST", "/v1/chat/completions", json={**LONG, "max_tokens": 3000, "stream": True}
            ) as stream,
        ):
            lines = stream.iter_lines()
            next(lines)
            server.process.send_signal(signal.SIGINT)
            time.sleep(0.5)
            assert server.process.poll() is None  # draining
            started = time.monotonic()
            server.process.send_signal(signal.SIGINT)
            code, _ = wait_exit(server, 15)
            took = time.monotonic() - started
            with pytest.raises(httpx.HTTPError):
                for _ in lines:
                    pass
    finally:
        server.stop()
    assert code == 0
    assert took < 5


def test_health_is_503_while_a_model_loads(
    tmp_path: Path, default_model_file: Path, gemma_model_file: Path
) -> None:
    home = tmp_path / "home"
    install_default_model(home, default_model_file)
    install_model(home, gemma_model_file, GEMMA3_270M)
    server = start_server(home, "--no-model")
    seen: list[tuple[int, str]] = []
    try:
        loader = threading.Thread(
            target=httpx.post,
            args=(f"{server.base_url}/api/v1/models/load",),
            kwargs={"json": {"model": GEMMA_ID}, "timeout": 120},
        )
        loader.start()
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            while loader.is_alive():
                health = http.get("/health")
                seen.append((health.status_code, health.json()["status"]))
            loader.join()
            final = http.get("/health")
    finally:
        server.stop()
    assert (503, "loading") in seen
    assert final.status_code == 200 and GEMMA_ID in final.json()["models"]
