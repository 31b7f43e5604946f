"""LM Studio plugins hosted by lmserve: a real plugin on LM Studio's Python SDK
(tests/lmstudio_plugin, run as a user runs one: ``python -m lmstudio.plugin --dev PATH``) and a
generator plugin on the JavaScript SDK (tests/js/plugin_check.cjs), the real model.

The plugin finds the server as the SDK finds LM Studio, on a discovery port, so the module's
server takes one.  The small model would rarely call a tool on its own: the tests force the
first call (``tool_choice``) and assert what the server did with it.  The test that kills the
plugin comes last.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL_ID as MODEL
from tests.conftest import Server, running_server
from tests.helpers import free_sdk_port, log_records
from tests.test_lmstudio_sdk_js import node_modules, run_script  # noqa: F401 (a fixture)

PLUGIN_DIR = Path(__file__).with_name("lmstudio_plugin")
PLUGIN = "lmserve-tests/toolbox"
NONCE = f"nonce-{secrets.token_hex(6)}"
TIMEOUT = 3.0  # --plugin-timeout


def wait_for(condition: Any, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    port = free_sdk_port()
    if not isinstance(port, int):
        pytest.skip(port)
    args = ("--sdk-port", str(port), "--plugin-timeout", str(TIMEOUT))
    with running_server(tmp_path_factory, default_model_file, *args) as started:
        yield started


class DevPlugin:
    """``python -m lmstudio.plugin --dev``: its controlling process, its output, its plugin's
    process id."""

    def __init__(self, server: Server, tmp: Path) -> None:
        self.output = tmp / "plugin.log"
        self.pidfile = tmp / "plugin.pid"
        env = {
            **os.environ,
            "PLUGIN_FIXTURE_NONCE": NONCE,
            "PLUGIN_FIXTURE_PIDFILE": str(self.pidfile),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "lmstudio.plugin", "--dev", str(PLUGIN_DIR)],
            stdout=self.output.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own group: the plugin's process goes with it
            # The runner stops its child with SIGINT: a test run's ignored SIGINT must not
            # pass on to it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        started = f"plugin '{PLUGIN}' started"
        wait_for(lambda: started in server.log() or self.process.poll() is not None, what=started)
        assert started in server.log(), self.output.read_text()

    @property
    def plugin_pid(self) -> int:
        return int(self.pidfile.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def plugin(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevPlugin]:
    dev = DevPlugin(server, tmp_path_factory.mktemp("plugin"))
    try:
        yield dev
    finally:
        dev.stop()


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120.0) as client:
        yield client


def chat(api: httpx.Client, tool: str | None, **fields: object) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "input": "What is the secret word for apples?",
        "integrations": [PLUGIN],
        "max_output_tokens": 96,
        "max_tool_rounds": 1,
        "temperature": 0,
    }
    if tool is not None:
        body["tool_choice"] = {"type": "function", "name": tool}
    response = api.post("/api/v1/chat", json={**body, **fields})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def first_call(result: dict[str, Any]) -> dict[str, Any]:
    return next(item for item in result["output"] if item["type"].endswith("tool_call"))


def test_a_dev_plugin_tools_and_preprocessor_serve_a_chat(
    api: httpx.Client, server: Server, plugin: DevPlugin
) -> None:
    """The plugin's tool runs in its own process; its result is the call's output and is in
    the next round's prompt; the user's message reaches the model as the plugin's prompt
    preprocessor rewrote it (and its status reports are in the server's log)."""
    with log_records(server, ("llm.prediction.input",)) as records:
        result = chat(api, "secret_word")
        wait_for(lambda: len(records) >= 2, 20, "two rounds' prompts")
    call = first_call(result)
    assert call["type"] == "tool_call", call
    assert call["tool"] == "secret_word"
    assert NONCE in call["output"]
    assert call["provider_info"] == {"type": "plugin", "plugin_id": PLUGIN}
    first, second = records[0]["prompt"], records[1]["prompt"]
    assert f"What is the secret word for apples? [seen by {NONCE}]" in first
    assert "secret_word" in first
    assert NONCE in second.replace(f"[seen by {NONCE}]", "")
    assert f"plugin '{PLUGIN}': Marking the message" in server.log()
    listed = api.get("/lmserve/plugins").json()["plugins"]
    assert listed == [
        {
            "id": PLUGIN,
            "development": True,
            "started": True,
            "hooks": ["promptPreprocessor", "toolsProvider"],
        }
    ]


def test_allowed_tools_limit_what_a_plugin_offers(
    api: httpx.Client, server: Server, plugin: DevPlugin
) -> None:
    allowed = {"type": "plugin", "id": PLUGIN, "allowed_tools": ["explode"]}
    with log_records(server, ("llm.prediction.input",)) as records:
        chat(api, None, integrations=[allowed], max_output_tokens=1)
        wait_for(lambda: records, 20, "the prompt")
    assert "explode" in records[0]["prompt"] and "secret_word" not in records[0]["prompt"]


def test_a_tool_that_raises_is_an_error_the_model_reads(
    api: httpx.Client, plugin: DevPlugin
) -> None:
    call = first_call(chat(api, "explode"))
    assert call["type"] == "invalid_tool_call"
    assert call["metadata"]["type"] == "tool_error"
    assert f"exploded on purpose ({NONCE})" in call["reason"]


def test_a_tool_that_hangs_fails_its_call_at_the_time_limit(
    api: httpx.Client, plugin: DevPlugin
) -> None:
    started = time.monotonic()
    call = first_call(chat(api, "wait_forever"))
    assert call["type"] == "invalid_tool_call"
    assert call["metadata"]["type"] == "call_failed"
    assert f"gave no answer within {TIMEOUT:g} s" in call["reason"]
    assert time.monotonic() - started < TIMEOUT + 30  # its own time limit, not the client's


def test_an_unknown_plugin_is_a_400_naming_the_registered_ones(
    api: httpx.Client, plugin: DevPlugin
) -> None:
    response = api.post(
        "/api/v1/chat", json={"model": MODEL, "input": "Hi", "integrations": ["someone/absent"]}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "plugin_not_found"
    assert "someone/absent" in error["message"] and PLUGIN in error["message"]


def test_the_javascript_sdk_runs_a_generator_plugin_and_uses_plugin_tools(
    node_modules: Path,  # noqa: F811 (the fixture)
    server: Server,
    plugin: DevPlugin,
) -> None:
    script = Path(__file__).parent / "js" / "plugin_check.cjs"
    steps = {
        line["step"]: line
        for line in run_script(script, node_modules, server, PLUGIN=PLUGIN, NONCE=NONCE)
    }
    assert steps["registered"]["hasCredentials"] is True
    generated = steps["generated"]
    assert generated["content"] == f"{NONCE}: hello from the client "
    assert generated["fragments"][0] == f"{NONCE}: "
    assert f"generator failed on purpose ({NONCE})" in steps["generatorError"]["error"]
    assert steps["cancelled"]["content"] == ""  # aborted by the client, no error
    tools = steps["pluginTools"]
    assert tools["names"] == ["secret_word", "explode", "wait_forever"]
    assert tools["result"] == f"The secret word for owls is {NONCE}."
    assert f"exploded on purpose ({NONCE})" in tools["toolError"]
    assert "no plugin 'lmserve-tests/echo-generator'" in steps["afterUnregister"]["error"]


def test_a_plugin_killed_mid_call_fails_that_call_and_the_server_serves_on(
    api: httpx.Client, server: Server, plugin: DevPlugin
) -> None:
    """Last: the plugin's process dies during a call.  The call fails at once, naming the
    plugin; the answer still comes; the dev runner then ends its registration, and the
    plugin is gone for the next request."""
    answers: list[dict[str, Any]] = []
    calls_before = plugin.output.read_text().count("Running tool call")
    asking = threading.Thread(target=lambda: answers.append(chat(api, "wait_forever")))
    asking.start()
    wait_for(
        lambda: plugin.output.read_text().count("Running tool call") > calls_before, 60, "the call"
    )
    killed = time.monotonic()
    os.kill(plugin.plugin_pid, signal.SIGKILL)
    asking.join(60)
    call = first_call(answers[0])
    assert call["type"] == "invalid_tool_call"
    assert call["metadata"]["type"] == "call_failed"
    assert "disconnected (it crashed or was stopped)" in call["reason"], call
    assert time.monotonic() - killed < 30
    assert api.get("/health").json()["status"] == "ok"
    wait_for(lambda: f"plugin '{PLUGIN}' unregistered" in server.log(), 30, "unregistered")
    body = {"model": MODEL, "input": "Hi", "integrations": [PLUGIN]}
    response = api.post("/api/v1/chat", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "plugin_not_found"
    plain = api.post("/api/v1/chat", json={"model": MODEL, "input": "Hi", "max_output_tokens": 4})
    assert plain.status_code == 200
