"""MCP tools run by the server: real MCP servers (the official SDK's, tests/mcp_fixture.py)
over streamable HTTP, SSE and stdio (from mcp.json), the real model, the real clients.

The small model would rarely call a tool on its own, so most tests force the first call
(``tool_choice``) and assert what the server did with it: the fixture's nonce in the call's
output, in the next round's prompt (the log stream) and in the stored conversation.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
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
from tests.conftest import Server, free_port, install_default_model, start_server
from tests.helpers import log_records

FIXTURE = Path(__file__).with_name("mcp_fixture.py")
NONCE = f"nonce-{secrets.token_hex(6)}"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the MCP fixture exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("the MCP fixture did not start")


@contextlib.contextmanager
def mcp_fixture(transport: str) -> Iterator[str]:
    """A fixture MCP server on a loopback port; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(FIXTURE), transport, str(port)],
        env={**os.environ, "MCP_FIXTURE_NONCE": NONCE},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/{'mcp' if transport == 'http' else 'sse'}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with mcp_fixture("http") as url:
        yield url


@pytest.fixture(scope="module")
def mcp_sse_url() -> Iterator[str]:
    with mcp_fixture("sse") as url:
        yield url


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    sock.close()


def write_mcp_json(home: Path, pidfile: Path) -> None:
    config = {
        "mcpServers": {
            "local": {
                "command": sys.executable,
                "args": [str(FIXTURE), "stdio"],
                "env": {"MCP_FIXTURE_NONCE": NONCE, "MCP_FIXTURE_PIDFILE": str(pidfile)},
            }
        }
    }
    (home / "mcp.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def mcp_server(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[Server]:
    """lmserve with per-request MCP servers and mcp.json allowed, short MCP time limits."""
    home = tmp_path_factory.mktemp("mcp-home")
    install_default_model(home, default_model_file)
    write_mcp_json(home, home / "stdio.pid")
    server = start_server(
        home,
        "--allow-mcp-urls",
        "--allow-mcp-json",
        "--mcp-connect-timeout",
        "3",
        "--mcp-call-timeout",
        "3",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def api(mcp_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mcp_server.base_url, timeout=120.0) as client:
        yield client


def ephemeral(url: str, **fields: object) -> dict[str, object]:
    return {"type": "ephemeral_mcp", "server_label": "fixture", "server_url": url, **fields}


FORCE_SECRET = {"type": "function", "name": "secret_word"}


def native_chat(api: httpx.Client, **fields: object) -> dict[str, object]:
    # One round of calls, then the answer: the small model, offered the tools again, would
    # call them round after round up to the cap.
    body = {
        "input": "What is the secret word for apples?",
        "max_output_tokens": 128,
        "max_tool_rounds": 1,
        "temperature": 0,
    }
    response = api.post("/api/v1/chat", json={**body, **fields})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- LM Studio's /api/v1/chat integrations -------------------------------------------------------


def calls_of(result: dict[str, Any], kind: str = "tool_call") -> list[dict[str, Any]]:
    return [item for item in result["output"] if item["type"] == kind]


def test_native_chat_runs_an_ephemeral_mcp_call(
    api: httpx.Client, mcp_server: Server, mcp_url: str
) -> None:
    """The forced call runs on the MCP server; its result is in the output item, in the log
    (mcp.call, mcp.result) and in the prompt of the round after it."""
    kinds = ("mcp.call", "mcp.result", "llm.prediction.input")
    with log_records(mcp_server, kinds) as records:
        result = native_chat(
            api,
            integrations=[ephemeral(mcp_url, allowed_tools=["secret_word"])],
            tool_choice=FORCE_SECRET,
            temperature=0,
        )
        wait_for(lambda: sum(r["type"] == "llm.prediction.input" for r in records) >= 2)
    call = calls_of(result)[0]  # the model may call it more than once
    assert call["tool"] == "secret_word"
    assert NONCE in call["output"]
    assert isinstance(call["arguments"], dict)
    assert call["provider_info"] == {"type": "ephemeral_mcp", "server_label": "fixture"}
    assert result["output"][-1]["type"] == "message"
    prompts = [r["prompt"] for r in records if r["type"] == "llm.prediction.input"]
    # Round 1 offers the allowed tool only; round 2 reads its result.
    assert "secret_word" in prompts[0] and "request_headers" not in prompts[0]
    assert NONCE not in prompts[0] and NONCE in prompts[1]
    logged = {r["type"]: r for r in records if r["type"].startswith("mcp.")}
    assert logged["mcp.call"]["tool"] == "secret_word"
    assert NONCE in logged["mcp.result"]["output"]
    metrics = api.get("/metrics").text
    assert 'lmserve_mcp_calls_total{outcome="ok",server="fixture"}' in metrics
    # Two rounds' tokens are counted.
    assert result["stats"]["input_tokens"] > 2 * len(prompts[0]) // 8


def test_native_chat_stream_has_tool_call_events(api: httpx.Client, mcp_url: str) -> None:
    body = {
        "input": "What is the secret word for pears?",
        "max_output_tokens": 128,
        "integrations": [ephemeral(mcp_url)],
        "tool_choice": FORCE_SECRET,
        "max_tool_rounds": 1,
        "temperature": 0,
        "stream": True,
    }
    with api.stream("POST", "/api/v1/chat", json=body) as response:
        assert response.status_code == 200
        events = named_events(response)
    kinds = [event["type"] for event in events]
    start = kinds.index("tool_call.start")
    assert kinds[start : start + 3] == [
        "tool_call.start",
        "tool_call.arguments",
        "tool_call.success",
    ]
    success = events[start + 2]
    assert NONCE in success["output"] and success["tool"] == "secret_word"
    assert kinds[-1] == "chat.end"
    assert calls_of(events[-1]["result"])[0]["output"] == success["output"]
    assert kinds.index("message.start") > start  # the answer comes after the call


def test_a_client_that_disconnects_stops_the_loop(
    api: httpx.Client, mcp_server: Server, mcp_url: str
) -> None:
    """Gone during a call (one that hangs): the call is abandoned, no round follows it."""
    body = {
        "input": "Wait for me.",
        "max_output_tokens": 128,
        "integrations": [ephemeral(mcp_url)],
        "tool_choice": {"type": "function", "name": "wait_forever"},
        "temperature": 0,
        "stream": True,
    }
    kinds = ("llm.prediction.input", "mcp.call", "mcp.result")
    with log_records(mcp_server, kinds) as records:
        with api.stream("POST", "/api/v1/chat", json=body) as response:
            started = False
            for line in response.iter_lines():
                if "tool_call.start" in line:
                    started = True
                    break
        assert started
        # Past the call's time limit (3 s): had the loop gone on, the result and the next
        # round would be in the log by now.
        time.sleep(4.5)
    assert [record["type"] for record in records] == ["llm.prediction.input", "mcp.call"]


def test_headers_reach_the_mcp_server(api: httpx.Client, mcp_url: str) -> None:
    result = native_chat(
        api,
        integrations=[
            ephemeral(mcp_url, headers={"X-Lmserve-Test": "abc", "Authorization": "Bearer t0k"})
        ],
        tool_choice={"type": "function", "name": "request_headers"},
    )
    sent = json.loads(calls_of(result)[0]["output"])
    assert sent["x-lmserve-test"] == "abc" and sent["authorization"] == "Bearer t0k"


def test_the_older_sse_transport(api: httpx.Client, mcp_sse_url: str) -> None:
    result = native_chat(api, integrations=[ephemeral(mcp_sse_url)], tool_choice=FORCE_SECRET)
    assert NONCE in calls_of(result)[0]["output"]


def test_a_tool_that_fails_or_hangs_is_an_item_the_model_sees(
    api: httpx.Client, mcp_server: Server, mcp_url: str
) -> None:
    with log_records(mcp_server, ("llm.prediction.input",)) as records:
        result = native_chat(
            api,
            integrations=[ephemeral(mcp_url)],
            tool_choice={"type": "function", "name": "explode"},
        )
        wait_for(lambda: len(records) >= 2)
    failed = calls_of(result, "invalid_tool_call")[0]
    assert failed["metadata"]["type"] == "tool_error"
    assert failed["metadata"]["tool_name"] == "explode"
    assert "Error" in records[1]["prompt"]  # the model reads the failure
    started = time.monotonic()
    result = native_chat(
        api,
        integrations=[ephemeral(mcp_url)],
        tool_choice={"type": "function", "name": "wait_forever"},
    )
    assert time.monotonic() - started < 60
    hung = calls_of(result, "invalid_tool_call")[0]
    assert hung["metadata"]["type"] == "call_failed" and "3 s" in hung["reason"]


def test_unreachable_servers_fail_within_the_timeout(api: httpx.Client, silent_port: int) -> None:
    closed = free_port()
    for url in (f"http://127.0.0.1:{closed}/mcp", f"http://127.0.0.1:{silent_port}/mcp"):
        started = time.monotonic()
        response = api.post("/api/v1/chat", json={"input": "Hi", "integrations": [ephemeral(url)]})
        assert time.monotonic() - started < 3 + 5
        assert response.status_code == 424, response.text
        assert "fixture" in response.json()["error"]["message"]
    assert api.get("/health").status_code == 200


def test_rounds_stop_at_the_cap(api: httpx.Client, mcp_server: Server, mcp_url: str) -> None:
    """After max_tool_rounds rounds of calls the model answers without the tools; with 0 it
    is never offered them."""
    with log_records(mcp_server, ("llm.prediction.input",)) as records:
        for rounds in (1, 0):
            native_chat(
                api,
                integrations=[ephemeral(mcp_url)],
                tool_choice=FORCE_SECRET,
                max_tool_rounds=rounds,
            )
        wait_for(lambda: len(records) >= 3)
    first, after_cap, never = (record["prompt"] for record in records)
    assert "secret_word" in first
    assert NONCE in after_cap and "request_headers" not in after_cap
    assert "secret_word" not in never


def test_mcp_json_stdio_server(api: httpx.Client, mcp_server: Server) -> None:
    """mcp.json's stdio server is started on first use and kept for the next request."""
    result = native_chat(api, integrations=["mcp/local"], tool_choice=FORCE_SECRET)
    call = calls_of(result)[0]
    assert NONCE in call["output"]
    assert call["provider_info"] == {"type": "plugin", "plugin_id": "mcp/local"}
    pid = int((mcp_server.home / "stdio.pid").read_text())
    result = native_chat(
        api,
        integrations=[{"type": "plugin", "id": "mcp/local", "allowed_tools": ["add"]}],
        tool_choice={"type": "function", "name": "add"},
    )
    assert NONCE in calls_of(result)[0]["output"]
    assert int((mcp_server.home / "stdio.pid").read_text()) == pid  # the same process
    response = api.post("/api/v1/chat", json={"input": "Hi", "integrations": ["mcp/absent"]})
    assert response.status_code == 400 and "local" in response.json()["error"]["message"]
    report = api.get("/lmserve/mcp").json()
    assert report["allow_config"] and report["allow_urls"]
    assert report["servers"] == [{"name": "local", "transport": "stdio", "running": True}]


def test_refused_without_the_flags(http: httpx.Client, mcp_url: str) -> None:
    """The shared server was started without --allow-mcp-urls and --allow-mcp-json."""
    cases = [
        ("/api/v1/chat", {"input": "Hi", "integrations": [ephemeral(mcp_url)]}, "--allow-mcp-urls"),
        ("/api/v1/chat", {"input": "Hi", "integrations": ["mcp/local"]}, "--allow-mcp-json"),
        (
            "/v1/responses",
            {"input": "Hi", "tools": [{"type": "mcp", "server_label": "x", "server_url": mcp_url}]},
            "--allow-mcp-urls",
        ),
    ]
    for path, body, flag in cases:
        response = http.post(path, json=body)
        assert response.status_code == 403, response.text
        assert flag in response.json()["error"]["message"]
    report = http.get("/lmserve/mcp").json()
    assert not report["allow_config"] and report["servers"] == []


def test_stdio_servers_stop_with_lmserve(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> None:
    home = tmp_path_factory.mktemp("mcp-stop")
    install_default_model(home, default_model_file)
    pidfile = home / "stdio.pid"
    write_mcp_json(home, pidfile)
    server = start_server(home, "--allow-mcp-json")
    try:
        with httpx.Client(base_url=server.base_url, timeout=120.0) as client:
            result = native_chat(client, integrations=["mcp/local"], tool_choice=FORCE_SECRET)
        assert NONCE in calls_of(result)[0]["output"]
        pid = int(pidfile.read_text())
        os.kill(pid, 0)  # running
    finally:
        assert server.stop() == 0
    wait_for(lambda: not _alive(pid))


# -- OpenAI's Responses API `mcp` tools, through the official SDK -------------------------------


def mcp_tool(url: str, **fields: object) -> dict[str, object]:
    return {"type": "mcp", "server_label": "fixture", "server_url": url, **fields}


@pytest.fixture()
def openai_client(mcp_server: Server) -> Iterator[Any]:
    from openai import OpenAI

    with OpenAI(base_url=mcp_server.api_url, api_key="lm-studio", max_retries=0) as client:
        yield client


def test_responses_mcp_call(openai_client: Any, mcp_url: str) -> None:
    response = openai_client.responses.create(
        model=MODEL,
        input="What is the secret word for plums?",
        tools=[
            mcp_tool(
                mcp_url,
                require_approval="never",
                allowed_tools=["secret_word", "request_headers"],
                authorization="oauth-t0k",
            )
        ],
        tool_choice={"type": "mcp", "server_label": "fixture", "name": "secret_word"},
        max_output_tokens=128,
        temperature=0,
        extra_body={"max_tool_rounds": 1},
    )
    kinds = [item.type for item in response.output]
    assert kinds[0] == "mcp_list_tools"
    assert {tool.name for tool in response.output[0].tools} == {"secret_word", "request_headers"}
    call = next(item for item in response.output if item.type == "mcp_call")
    assert NONCE in call.output and call.error is None and call.server_label == "fixture"
    assert kinds[-1] == "message"
    assert "authorization" not in response.tools[0].model_dump(exclude_none=True)
    # The stored conversation gives the call to the next turn.
    listed = openai_client.responses.input_items.list(response.id)
    assert listed.data is not None
    follow = openai_client.responses.create(
        model=MODEL,
        previous_response_id=response.id,
        input="And who told you?",
        tools=[
            mcp_tool(
                mcp_url,
                require_approval="never",
                allowed_tools=["request_headers"],
                authorization="oauth-t0k",
            )
        ],
        tool_choice={"type": "mcp", "server_label": "fixture", "name": "request_headers"},
        max_output_tokens=128,
        temperature=0,
        extra_body={"max_tool_rounds": 1},
    )
    sent = json.loads(next(i for i in follow.output if i.type == "mcp_call").output)
    assert sent["authorization"] == "Bearer oauth-t0k"


def test_responses_mcp_stream_events(openai_client: Any, mcp_url: str) -> None:
    stream = openai_client.responses.create(
        model=MODEL,
        input="What is the secret word for figs?",
        tools=[mcp_tool(mcp_url, require_approval="never")],
        tool_choice={"type": "mcp", "server_label": "fixture", "name": "secret_word"},
        max_output_tokens=128,
        temperature=0,
        extra_body={"max_tool_rounds": 1},
        stream=True,
    )
    events = list(stream)
    kinds = [event.type for event in events]
    for kind in (
        "response.mcp_list_tools.completed",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
    ):
        assert kind in kinds
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response
    call = next(item for item in final.output if item.type == "mcp_call")
    assert NONCE in call.output


def test_responses_approval_round_trip(
    openai_client: Any, mcp_server: Server, mcp_url: str
) -> None:
    """OpenAI's default: a call waits for approval; the answer runs it on the next request."""
    tools = [mcp_tool(mcp_url, allowed_tools=["secret_word"])]
    choice = {"type": "mcp", "server_label": "fixture", "name": "secret_word"}
    first = openai_client.responses.create(
        model=MODEL,
        input="Secret word for kiwis?",
        tools=tools,
        tool_choice=choice,
        max_output_tokens=128,
        temperature=0,
        extra_body={"max_tool_rounds": 1},
    )
    request = next(item for item in first.output if item.type == "mcp_approval_request")
    assert request.name == "secret_word"
    assert not any(item.type == "mcp_call" for item in first.output)
    with log_records(mcp_server, ("mcp.call",)) as records:
        second = openai_client.responses.create(
            model=MODEL,
            previous_response_id=first.id,
            input=[
                {
                    "type": "mcp_approval_response",
                    "approve": True,
                    "approval_request_id": request.id,
                }
            ],
            tools=tools,
            max_output_tokens=128,
            extra_body={"max_tool_rounds": 1},
        )
    call = next(item for item in second.output if item.type == "mcp_call")
    assert call.approval_request_id == request.id and NONCE in call.output
    assert [record["tool"] for record in records] == ["secret_word"]


def test_a_client_function_beside_mcp_tools_ends_the_response(
    openai_client: Any, mcp_url: str
) -> None:
    """The client's own function is the client's to run: the response ends at its call."""
    function = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    response = openai_client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[function, mcp_tool(mcp_url, require_approval="never")],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=128,
        temperature=0,
    )
    kinds = [item.type for item in response.output]
    assert kinds[0] == "mcp_list_tools" and "function_call" in kinds
    assert "mcp_call" not in kinds
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "get_weather"


def test_mcp_json_off_loopback_needs_an_api_key(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    result = run_cli(tmp_path, "serve", "--host", "0.0.0.0", "--allow-mcp-json", "--no-model")
    assert result.returncode != 0
    assert "--allow-mcp-json" in result.stderr and "--api-key" in result.stderr
    assert "Traceback" not in result.stderr


def test_responses_unreachable_server_is_424(openai_client: Any) -> None:
    import openai

    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.responses.create(
            model=MODEL,
            input="Hi",
            tools=[mcp_tool(f"http://127.0.0.1:{free_port()}/mcp")],
        )
    assert caught.value.status_code == 424


# -- Anthropic's MCP connector (mcp_servers), through the official SDK --------------------------


def test_anthropic_mcp_connector(mcp_server: Server, mcp_url: str) -> None:
    from anthropic import Anthropic

    with Anthropic(base_url=mcp_server.base_url, api_key="lm-studio", max_retries=0) as client:
        message = client.beta.messages.create(
            model=MODEL,
            max_tokens=128,
            messages=[{"role": "user", "content": "What is the secret word for limes?"}],
            mcp_servers=[
                {
                    "type": "url",
                    "url": mcp_url,
                    "name": "fixture",
                    "authorization_token": "anthropic-t0k",
                    "tool_configuration": {"allowed_tools": ["secret_word"]},
                }
            ],
            tool_choice={"type": "tool", "name": "secret_word"},
            betas=["mcp-client-2025-04-04"],
            # The SDK's beta method has no temperature any more; the API takes it.
            extra_body={"max_tool_rounds": 1, "temperature": 0},
        )
        kinds = [block.type for block in message.content]
        assert kinds[:2] == ["mcp_tool_use", "mcp_tool_result"], kinds
        use, result = message.content[0], message.content[1]
        assert use.name == "secret_word" and use.server_name == "fixture"
        assert result.tool_use_id == use.id and not result.is_error
        assert NONCE in result.content[0].text
        # Sent back as history, the blocks are the model's earlier call and its result.
        history = [
            {"role": "user", "content": "What is the secret word for limes?"},
            {"role": "assistant", "content": [block.model_dump() for block in message.content]},
            {"role": "user", "content": "Thanks."},
        ]
        again = client.beta.messages.create(
            model=MODEL, max_tokens=4, messages=history, betas=["mcp-client-2025-04-04"]
        )
        assert again.content[0].type == "text"
        with client.beta.messages.stream(
            model=MODEL,
            max_tokens=128,
            messages=[{"role": "user", "content": "The secret word for kiwis?"}],
            mcp_servers=[{"type": "url", "url": mcp_url, "name": "fixture"}],
            tool_choice={"type": "tool", "name": "secret_word"},
            betas=["mcp-client-2025-04-04"],
            # The SDK's beta method has no temperature any more; the API takes it.
            extra_body={"max_tool_rounds": 1, "temperature": 0},
        ) as stream:
            final = stream.get_final_message()
        streamed = [block for block in final.content if block.type == "mcp_tool_result"]
        assert streamed and NONCE in streamed[0].content[0].text


# -- the CLI ------------------------------------------------------------------------------------


def test_mcp_ls_lists_mcp_json_servers(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    write_mcp_json(tmp_path, tmp_path / "ls.pid")
    config = json.loads((tmp_path / "mcp.json").read_text())
    config["mcpServers"]["gone"] = {"url": f"http://127.0.0.1:{free_port()}/mcp"}
    (tmp_path / "mcp.json").write_text(json.dumps(config))
    result = run_cli(tmp_path, "mcp", "ls", "--json", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    servers = {entry["name"]: entry for entry in json.loads(result.stdout)["servers"]}
    assert {tool["name"] for tool in servers["local"]["tools"]} >= {"secret_word", "add"}
    assert "cannot be reached" in servers["gone"]["error"]
    (tmp_path / "mcp.json").write_text("{not json")
    broken = run_cli(tmp_path, "mcp", "ls")
    assert broken.returncode != 0 and "not valid JSON" in broken.stderr
    assert "Traceback" not in broken.stderr


# -- helpers ----------------------------------------------------------------------------------


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of an exited lmserve is reaped by init; treat it as gone.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    return True


def named_events(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    return events
