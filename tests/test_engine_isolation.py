"""Engine worker processes: a crash in llama.cpp never takes the server down.

Real servers, the real model, real worker processes killed by real signals.  The stand-in for
a CPU whose repacked kernels crash (an AMX Xeon) is the worker's fault injection: it kills
itself with SIGSEGV at the self-check's batched decode, where those kernels die.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmserve.engine.selfcheck import FAULTS_VARIABLE
from lmserve.models.default import GEMMA3_270M
from tests.conftest import (
    GEMMA_ID,
    MODEL_ID,
    Server,
    install_default_model,
    install_model,
    run_cli,
    start_server,
)

# Bans <|endoftext|> and <|im_end|>: a request runs until it is stopped or killed.
NO_END = {"0": -100, "2": -100}  # SmolLM2's end tokens
GEMMA_NO_END = {"1": -100, "106": -100, "212": -100}  # Gemma 3's


@pytest.fixture()
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def home_with_models(tmp_path: Path, default_model_file: Path, gemma: Path | None = None) -> Path:
    home = tmp_path / f"home-{len(list(tmp_path.iterdir()))}"
    install_default_model(home, default_model_file)
    if gemma is not None:
        install_model(home, gemma, GEMMA3_270M)
    return home


def chat(
    server: Server, model: str = MODEL_ID, max_tokens: int = 8, **extra: Any
) -> httpx.Response:
    return httpx.post(
        f"{server.api_url}/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a long story about a ship."}],
            "max_tokens": max_tokens,
            **extra,
        },
        timeout=120,
    )


def engine_pid(server: Server, identifier: str) -> int:
    engines = httpx.get(f"{server.base_url}/health", timeout=10).json()["engines"]
    return int(engines[identifier]["pid"])


def wait_for(condition: Any, timeout: float = 60.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class HealthWatch:
    """Polls /health in the background and keeps every status code it saw."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=5) as http:
            while not self._stop.is_set():
                try:
                    self.codes.append(http.get("/health").status_code)
                except httpx.HTTPError:
                    self.codes.append(0)  # no answer at all
                time.sleep(0.05)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class StreamRun:
    """A streamed chat completion in a thread: its lines, and when it ended."""

    def __init__(self, server: Server, model: str = MODEL_ID) -> None:
        self.server = server
        self.model = model
        self.lines: list[str] = []
        self.tokens = 0
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 3000,
            "stream": True,
            "logit_bias": NO_END,
        }
        try:
            with httpx.stream(
                "POST", f"{self.server.api_url}/chat/completions", json=body, timeout=120
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line[6:])
                        if '"content":"' in line and '"content":""' not in line:
                            self.tokens += 1
        except BaseException as exc:  # the test reports it
            self.error = exc
        self.ended_at = time.monotonic()

    @property
    def last(self) -> Any:
        return json.loads(self.lines[-1]) if self.lines and self.lines[-1] != "[DONE]" else None


class PlainRun:
    """A non-streamed chat completion in a thread."""

    def __init__(self, server: Server, max_tokens: int = 3000) -> None:
        self.response: httpx.Response | None = None
        self.thread = threading.Thread(target=self._run, args=(server, max_tokens), daemon=True)
        self.thread.start()

    def _run(self, server: Server, max_tokens: int) -> None:
        self.response = chat(server, max_tokens=max_tokens, logit_bias=NO_END)


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGKILL])
def test_a_killed_worker_fails_its_requests_at_once_and_the_server_goes_on(
    tmp_path: Path,
    servers: list[Server],
    default_model_file: Path,
    gemma_model_file: Path,
    signum: int,
) -> None:
    server = start_server(home_with_models(tmp_path, default_model_file, gemma_model_file))
    servers.append(server)
    assert (
        httpx.post(
            f"{server.base_url}/api/v1/models/load", json={"model": GEMMA_ID}, timeout=120
        ).status_code
        == 200
    )
    pid = engine_pid(server, MODEL_ID)
    assert pid != server.process.pid and pid != engine_pid(server, GEMMA_ID)
    with HealthWatch(server) as health:
        streams = [StreamRun(server) for _ in range(8)]
        # In the middle: the four slots are generating, the other requests wait in the queue.
        wait_for(lambda: sum(s.tokens > 3 for s in streams) >= 4, what="four streams to run")
        plain = [PlainRun(server) for _ in range(2)]
        wait_for(
            lambda: (
                httpx.get(f"{server.base_url}/lmserve/slots").json()["models"][0]["queue_depth"]
                == 6
            ),
            what="six requests to wait",
        )
        os.kill(pid, signum)
        killed_at = time.monotonic()
        for stream in streams:
            stream.thread.join(10)
        for run in plain:
            run.thread.join(10)
        # Another loaded model keeps answering (its end tokens banned, all 8 tokens asked).
        # A plain completion: Gemma has no chat template of its own, and under the ChatML
        # fallback it may write "<|im_end|>" as text, which ends a chat turn early.
        other = httpx.post(
            f"{server.api_url}/completions",
            json={
                "model": GEMMA_ID,
                "prompt": "Tell me a long story about a ship.",
                "max_tokens": 8,
                "logit_bias": GEMMA_NO_END,
            },
            timeout=120,
        )
        after = chat(server, logit_bias=NO_END)  # the crashed model, loaded again for it
    for stream in streams:
        assert stream.error is None and stream.ended_at is not None
        assert stream.ended_at - killed_at < 1.0, f"a stream took {stream.ended_at - killed_at}"
        assert stream.last is not None, stream.lines[-3:]
        error = stream.last["error"]  # the stream's last event is the error, then it ends
        assert error["code"] == "engine_crashed" and MODEL_ID in error["message"]
        assert signal.Signals(signum).name in error["message"]
    for run in plain:
        assert run.response is not None and run.response.status_code == 500
        assert run.response.json()["error"]["code"] == "engine_crashed"
    # Base Gemma's sampled tokens may all be special ones (<start_of_turn>...), which render
    # as nothing: that it generated them is the answer.
    assert other.status_code == 200 and other.json()["usage"]["completion_tokens"] == 8
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"]
    assert health.codes and set(health.codes) == {200}, sorted(set(health.codes))
    assert engine_pid(server, MODEL_ID) != pid and not pid_alive(pid)
    assert server.process.poll() is None
    log = server.log()
    assert f"was killed by signal {signal.Signals(signum).name}" in log
    assert "requests in flight: chatcmpl-" in log  # the log names the requests that failed


def test_repeated_crashes_back_off_and_are_reported(
    tmp_path: Path, servers: list[Server], default_model_file: Path
) -> None:
    server = start_server(home_with_models(tmp_path, default_model_file))
    servers.append(server)
    first = engine_pid(server, MODEL_ID)
    os.kill(first, signal.SIGKILL)
    second = wait_for(
        lambda: (
            MODEL_ID in (h := httpx.get(f"{server.base_url}/health").json())["models"]
            and h["engines"][MODEL_ID]["pid"] != first
            and h["engines"][MODEL_ID]["pid"]
        ),
        what="the first restart",
    )
    os.kill(second, signal.SIGKILL)
    # The second crash in a row waits a second before loading again; meanwhile requests get a
    # 503 that says when to come back, and /health stays 200.
    wait_for(
        lambda: any(
            record["crashes_in_a_row"] == 2
            for record in httpx.get(f"{server.base_url}/health").json()["crashed"]
        ),
        what="the second crash to be noticed",
    )
    refused = chat(server)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_crashed"
    assert refused.headers["Retry-After"] == "1"
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    ps = run_cli(server.home, "ps", "--port", str(server.port))
    assert "crashed 2 times in a row" in ps.stdout and "SIGKILL" in ps.stdout
    wait_for(lambda: chat(server).status_code == 200, what="the model to serve again")
    status = run_cli(server.home, "status", "--port", str(server.port))
    assert "2 times in a row" in status.stdout and "loaded again" in status.stdout


def test_a_jit_model_whose_worker_dies_is_loaded_by_its_next_request(
    tmp_path: Path, servers: list[Server], default_model_file: Path, gemma_model_file: Path
) -> None:
    server = start_server(home_with_models(tmp_path, default_model_file, gemma_model_file))
    servers.append(server)
    assert chat(server, GEMMA_ID).status_code == 200  # loaded just in time
    pid = engine_pid(server, GEMMA_ID)
    os.kill(pid, signal.SIGSEGV)
    wait_for(
        lambda: GEMMA_ID not in httpx.get(f"{server.base_url}/health").json()["models"],
        what="the crash to be noticed",
    )
    assert chat(server).status_code == 200  # the other model never noticed
    again = chat(server, GEMMA_ID)
    assert again.status_code == 200 and engine_pid(server, GEMMA_ID) != pid


def test_a_crash_while_loading_is_a_clear_error_and_the_next_load_works(
    tmp_path: Path, servers: list[Server], default_model_file: Path, gemma_model_file: Path
) -> None:
    faults = tmp_path / "faults"
    faults.write_text("")
    home = home_with_models(tmp_path, default_model_file, gemma_model_file)
    server = start_server(home, env={**os.environ, FAULTS_VARIABLE: f"@{faults}"})
    servers.append(server)
    faults.write_text("load")  # every worker that starts now dies while loading
    with HealthWatch(server) as health:
        failed = chat(server, GEMMA_ID)
        assert chat(server).status_code == 200  # the loaded model is untouched
    assert failed.status_code == 500
    error = failed.json()["error"]
    assert error["code"] == "model_load_failed" and "SIGSEGV" in error["message"]
    assert "repacking on and off" in error["message"]  # what was tried
    assert set(health.codes) <= {200, 503} and 0 not in health.codes
    faults.write_text("")
    assert chat(server, GEMMA_ID).status_code == 200
    assert server.process.poll() is None


def test_a_bug_in_the_engine_loop_fails_its_request_and_the_model_is_loaded_again(
    tmp_path: Path, servers: list[Server], default_model_file: Path
) -> None:
    faults = tmp_path / "faults"
    faults.write_text("engine-bug")  # read when a worker starts: the first one has the bug
    home = home_with_models(tmp_path, default_model_file)
    server = start_server(home, env={**os.environ, FAULTS_VARIABLE: f"@{faults}"})
    servers.append(server)
    faults.write_text("")
    first = engine_pid(server, MODEL_ID)
    with HealthWatch(server) as health:
        failed = chat(server)
        # The worker exits after failing its requests; the model is loaded again, bug-free.
        wait_for(lambda: not pid_alive(first), what="the worker with the bug to exit")
        again = chat(server, logit_bias=NO_END)
    assert failed.status_code == 500
    assert "internal error" in failed.json()["error"]["message"]
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 8
    assert engine_pid(server, MODEL_ID) != first
    assert set(health.codes) == {200}
    log = server.log()
    assert "RuntimeError: a bug injected by the tests" in log  # the traceback, for a report
    assert "exited with status 70" in log
    assert server.process.poll() is None


def test_a_cpu_whose_repacked_kernels_crash_serves_with_repacking_off(
    tmp_path: Path, servers: list[Server], default_model_file: Path
) -> None:
    """The AMX machine's story, with the self-check's crash injected."""
    home = home_with_models(tmp_path, default_model_file)
    env = {**os.environ, FAULTS_VARIABLE: "selfcheck-with-repack"}
    server = start_server(home, env=env)
    servers.append(server)
    response = chat(server, max_tokens=16)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
    ps = run_cli(home, "ps", "--json", "--port", str(server.port))
    (instance,) = json.loads(ps.stdout)
    assert instance["repack"] is False and instance["repack_setting"] == "auto"
    assert "SIGSEGV" in instance["repack_reason"]
    assert "weight repacking is off" in server.log() and "trying it off" in server.log()
    verdicts = json.loads((home / "selfcheck.json").read_text())["verdicts"]
    assert [verdict["repack"] for verdict in verdicts.values()] == [False]
    server.stop()

    # The next start follows the cached verdict: no worker crashes on the way.
    server = start_server(home, env=env)
    servers.append(server)
    assert chat(server).status_code == 200
    log = server.log()
    assert "verdict cached" in log and "trying it off" not in log
    text = run_cli(home, "status", "--port", str(server.port)).stdout
    assert "weight repacking off" in text

    # --repack on is obeyed: the crash is then a clear load error, not a dead server.
    refused = httpx.post(
        f"{server.base_url}/api/v1/models/load",
        json={"model": MODEL_ID, "identifier": "forced", "repack": "on"},
        timeout=120,
    )
    assert refused.status_code == 500 and "--repack on" in refused.json()["error"]["message"]
    assert chat(server).status_code == 200


def test_this_cpu_gets_a_verdict_and_serves(
    tmp_path: Path, servers: list[Server], default_model_file: Path
) -> None:
    """The real self-check on whatever CPU runs the tests (AMX or not): a verdict, cached,
    and a model that answers a batch of concurrent requests with it."""
    home = home_with_models(tmp_path, default_model_file)
    server = start_server(home)
    servers.append(server)
    runs = [PlainRun(server, max_tokens=32) for _ in range(4)]
    for run in runs:
        run.thread.join(120)
    assert all(run.response is not None and run.response.status_code == 200 for run in runs)
    verdicts = json.loads((home / "selfcheck.json").read_text())["verdicts"]
    (verdict,) = verdicts.values()
    with open("/proc/cpuinfo") as info:
        amx = "amx_tile" in info.read()
    reason = verdict["reason"]
    if verdict["repack"]:
        assert "passed" in reason
    else:  # only where repacked kernels crash, as they do on the AMX machines we know
        assert amx and "repacking on" in reason
    engines = httpx.get(f"{server.base_url}/health").json()["engines"]
    assert engines[MODEL_ID]["repack"] is verdict["repack"]


def test_off_is_obeyed_and_the_engine_runs_elsewhere_than_the_server(
    tmp_path: Path, servers: list[Server], default_model_file: Path
) -> None:
    server = start_server(home_with_models(tmp_path, default_model_file), "--repack", "off")
    servers.append(server)
    engine = httpx.get(f"{server.base_url}/health").json()["engines"][MODEL_ID]
    assert engine["repack"] is False and engine["repack_setting"] == "off"
    # The server process itself never loads llama.cpp.
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libllama" not in maps and "libggml" not in maps
    assert "libllama" in Path(f"/proc/{engine['pid']}/maps").read_text()
    assert chat(server).status_code == 200


def _voluntary_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < (os.cpu_count() or 1),
    reason="fewer usable CPUs than the thread count: OpenMP sleeps at its barriers anyway",
)
def test_decodes_do_not_sleep_at_every_barrier_after_the_self_check_and_embeddings(
    server: Server,
) -> None:
    """The worker's generation keeps OpenMP's threads spinning, not sleeping in the kernel at
    each of a decode's barriers, after the self-check and an embedding have run decodes of
    their own (on threads that must end: see lmserve.engine.llama.in_passing_thread).

    Counted, not timed: about 1 voluntary context switch a token when right, some 300 when a
    long-lived second OpenMP team throttles libgomp (default model, 2 cores)."""
    embedded = httpx.post(
        f"{server.api_url}/embeddings", json={"model": MODEL_ID, "input": "a short text"}
    )
    assert embedded.status_code == 200
    pid = engine_pid(server, MODEL_ID)
    assert chat(server, max_tokens=4).status_code == 200  # warm
    before = _voluntary_switches(pid)
    response = chat(server, max_tokens=64, temperature=0, logit_bias=NO_END)
    switches = _voluntary_switches(pid) - before
    assert response.status_code == 200
    tokens = response.json()["usage"]["completion_tokens"]
    assert tokens == 64
    assert switches / tokens < 30, f"{switches} voluntary context switches for {tokens} tokens"
