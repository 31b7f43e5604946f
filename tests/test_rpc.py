"""A model split over llama.cpp RPC workers: two real ``lmserve rpc-worker`` processes on
loopback ports (one thread each) and the real server, which holds SmolLM2 twice: loaded on its
own CPU at start, and loaded again over both workers (``rpc`` in the native load API) as
``smol-split``, so that every answer can be checked against the local one.

Needs llama-cpp-python built with the RPC backend (the README's install builds it); without it
the tests that need workers skip, unless ``LMSERVE_REQUIRE_RPC`` is set (CI sets it).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmserve.rpc.ggml import rpc_library_path
from lmserve.rpc.probe import RpcEndpointError, check_endpoint
from tests.conftest import MODEL_ID, Server, free_port, install_default_model, run_cli, start_server
from tests.helpers import stream_with

SPLIT = "smol-split"
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "Explain what a CPU does in one sentence.",
]


class Worker:
    """An ``lmserve rpc-worker`` process on a loopback port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "lmserve", "rpc-worker", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                check_endpoint(self.endpoint)
                return
            except RpcEndpointError:
                assert self.process.poll() is None, "the rpc-worker exited"
                assert time.monotonic() < deadline, "the rpc-worker did not start"
                time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def workers() -> Iterator[list[Worker]]:
    if not os.environ.get("LMSERVE_REQUIRE_RPC") and rpc_library_path() is None:
        pytest.skip("llama-cpp-python was built without RPC (see the README)")
    started = [Worker(free_port()), Worker(free_port())]
    for worker in started:
        worker.start()
    try:
        yield started
    finally:
        for worker in started:
            worker.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    install_default_model(home, default_model_file)
    started = start_server(home, "--parallel", "4")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def api(server: Server, workers: list[Worker]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        body = {
            "model": MODEL_ID,
            "identifier": SPLIT,
            "parallel": 4,
            "rpc": [worker.endpoint for worker in workers],
        }
        loaded = client.post("/api/v1/models/load", json=body)
        assert loaded.status_code == 200, loaded.text
        yield client


def chat(api: httpx.Client, model: str, prompt: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 24,
        "temperature": 0,
    }
    answer = api.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["choices"][0]["message"]["content"])


def complete(api: httpx.Client, model: str, prompt: str) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0}
    answer = api.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["choices"][0]["text"])


def test_split_answers_are_the_local_ones_alone_and_concurrently(api: httpx.Client) -> None:
    local = [chat(api, MODEL_ID, prompt) for prompt in PROMPTS]
    assert [chat(api, SPLIT, prompt) for prompt in PROMPTS] == local
    texts = [f"The {word} of the story is" for word in ("start", "end")]
    assert [complete(api, SPLIT, t) for t in texts] == [complete(api, MODEL_ID, t) for t in texts]
    # Four streams at once, batched on the workers: each the same as alone.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda prompt: chat(api, SPLIT, prompt), PROMPTS))
    assert together == local


def test_the_layers_are_on_the_workers(
    api: httpx.Client, server: Server, workers: list[Worker]
) -> None:
    engines = api.get("/health").json()["engines"]
    placement = engines[SPLIT]["placement"]
    remote = {entry["rpc"]: entry for entry in placement if entry["rpc"]}
    assert set(remote) == {worker.endpoint for worker in workers}
    # SmolLM2's 30 layers and its output layer are all on the workers, with their weights;
    # this machine keeps only the token embeddings (the input layer), as llama.cpp does.
    assert sum(entry["layers"] for entry in remote.values()) == 31
    assert all(entry["layers"] > 0 and entry["memory_mib"] > 10 for entry in remote.values())
    [here] = [entry for entry in placement if entry["rpc"] is None]
    model_mib = os.path.getsize(next((server.home / "models").rglob("*.gguf"))) / 2**20
    assert here["layers"] == 0 and here["memory_mib"] < model_mib / 2
    assert "placement" not in engines[MODEL_ID]  # the local one: all on this CPU
    # LM Studio's models API: the instance's config says the same.
    [entry] = [m for m in api.get("/api/v1/models").json()["models"] if m["key"] == MODEL_ID]
    [split] = [i for i in entry["loaded_instances"] if i["id"] == SPLIT]
    assert split["config"]["placement"] == placement
    listed = run_cli(server.home, "ps", "--port", str(server.port))
    assert listed.returncode == 0, listed.stderr
    for worker in workers:
        assert f"(RPC worker {worker.endpoint}): " in listed.stdout


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A loopback port that accepts connections and never says anything."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


def test_endpoints_that_are_no_workers_fail_the_load_cleanly(
    api: httpx.Client, server: Server, silent_listener: str
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    web_server = f"127.0.0.1:{server.port}"  # lmserve's own HTTP port
    cases = [
        (closed, "connection refused"),
        (web_server, "not a llama.cpp RPC worker"),
        (silent_listener, "no handshake within"),
    ]
    for endpoint, why in cases:
        body = {"model": MODEL_ID, "identifier": "smol-bad", "rpc": endpoint}
        answer = api.post("/api/v1/models/load", json=body)
        assert answer.status_code == 500, answer.text
        error = answer.json()["error"]
        assert error["code"] == "model_load_failed"
        assert endpoint in error["message"] and why in error["message"], error
    # The CLI says the same, cleanly.
    port = str(server.port)
    done = run_cli(
        server.home,
        "load",
        MODEL_ID,
        "-y",
        "--identifier",
        "smol-bad",
        "--rpc",
        closed,
        "--port",
        port,
    )
    assert done.returncode == 1 and "connection refused" in done.stderr
    assert "Traceback" not in done.stderr
    # The server keeps serving, the models it had included.
    assert api.get("/health").status_code == 200
    assert chat(api, SPLIT, PROMPTS[0]) == chat(api, MODEL_ID, PROMPTS[0])


def test_a_worker_killed_mid_stream_ends_it_and_the_model_comes_back(
    api: httpx.Client, server: Server, workers: list[Worker]
) -> None:
    lost = workers[1]
    killed_at: list[float] = []
    log_start = len(server.log())

    def kill_at_the_fifth(count: int, _response: httpx.Response) -> None:
        if count == 5:
            lost.kill()
            killed_at.append(time.monotonic())

    _, events = stream_with(api, SPLIT, kill_at_the_fifth)
    ended = time.monotonic()
    assert killed_at and ended - killed_at[0] < 10
    error = json.loads(events[-1].removeprefix("data:")).get("error")
    assert error and error["code"] == "engine_crashed", events[-1]
    assert lost.endpoint in error["message"] and "RPC worker" in error["message"]
    # The server stays up and its other model answers meanwhile.
    assert api.get("/health").status_code == 200
    assert chat(api, MODEL_ID, PROMPTS[2])
    # The model waits for its worker instead of failing loads in a row until it gives up.
    deadline = time.monotonic() + 30
    while f"{SPLIT}: waiting for its RPC worker {lost.endpoint}" not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)
    assert "could not load" not in server.log()[log_start:]
    assert SPLIT in api.get("/health").json()["restarting"]
    # With the worker back on its port, the model is loaded again and answers as before.
    lost.start()
    deadline = time.monotonic() + 90
    while SPLIT not in api.get("/health").json()["models"]:
        assert time.monotonic() < deadline, api.get("/health").json()
        time.sleep(0.5)
    assert chat(api, SPLIT, PROMPTS[1]) == chat(api, MODEL_ID, PROMPTS[1])


def test_a_build_without_rpc_says_how_to_rebuild() -> None:
    """What a user with a wheel pip cached before RPC sees (the library's absence is
    simulated: this machine's build has it)."""
    code = (
        "import lmserve.rpc.ggml as ggml\n"
        "ggml.rpc_library_path = lambda: None\n"
        "from lmserve.cli.main import cli\n"
        "cli(['rpc-worker', '--port', '1'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "built without llama.cpp's RPC backend" in done.stderr
    assert 'CMAKE_ARGS="-DGGML_RPC=on"' in done.stderr and "pip cache remove" in done.stderr
    assert "Traceback" not in done.stderr


def test_layers_are_counted_by_llama_cpps_rule() -> None:
    """The counts ps and /health show for a split llama.cpp was told outright (its
    ``load_tensors`` rule: the last ``n_gpu_layers`` of the 31 go to the devices, cut at
    each device's cumulative share)."""
    from lmserve.engine.placement import Plan, layer_counts
    from lmserve.rpc.ggml import Device

    two = Plan(
        devices=(Device(1, "RPC0", "a:1", 1), Device(2, "RPC1", "b:1", 1)),
        endpoints=("a:1", "b:1"),
        shares=(3.0, 1.0),
    )
    assert layer_counts(two, 30, -1) == ([24, 7], 0)  # 23.25 of 31 layers below 3/4
    assert layer_counts(two, 30, 11) == ([9, 2], 20)  # the first 20 stay on this CPU
    assert layer_counts(two, 30, 0) == ([0, 0], 31)


def test_serve_and_server_start_take_the_workers() -> None:
    """``serve --rpc`` makes every model's default; ``server start`` passes the list on whole."""
    from lmserve.cli.serve import serve, settings_from_options
    from lmserve.cli.server import _serve_arguments

    flags = ["--rpc", "127.0.0.1:50052,127.0.0.1:50053", "--tensor-split", "3,1"]
    options = serve.make_context("serve", flags).params
    defaults = settings_from_options(options).models
    assert defaults.rpc == ("127.0.0.1:50052", "127.0.0.1:50053")
    assert defaults.tensor_split == (3.0, 1.0)
    again = serve.make_context("serve", _serve_arguments(options)).params
    assert settings_from_options(again).models == defaults


def test_unloading_a_model_that_waits_for_its_worker_calls_the_reload_off(
    api: httpx.Client, server: Server, workers: list[Worker]
) -> None:
    lost = workers[0]
    log_start = len(server.log())

    def kill_at_the_third(count: int, _response: httpx.Response) -> None:
        if count == 3:
            lost.kill()

    stream_with(api, SPLIT, kill_at_the_third)
    deadline = time.monotonic() + 30
    while f"{SPLIT}: waiting for its RPC worker {lost.endpoint}" not in server.log()[log_start:]:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)
    unloaded = api.post("/api/v1/models/unload", json={"instance_id": SPLIT})
    assert unloaded.status_code == 200, unloaded.text
    assert SPLIT not in api.get("/health").json()["restarting"]
    lost.start()
    # The wait checks its workers every second: two checks later it has seen the worker back
    # and, called off, loaded nothing.
    time.sleep(2.5)
    assert SPLIT not in api.get("/health").json()["models"]
    assert f"{SPLIT} is loaded again" not in server.log()[log_start:]
