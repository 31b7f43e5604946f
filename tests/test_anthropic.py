"""Anthropic's Messages API (``/v1/messages``) on the real server, with the official SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from openai import OpenAI
from starlette.testclient import TestClient

from lmserve.api.anthropic.events import MessageEvents
from lmserve.api.anthropic.service import MessageTurn
from lmserve.api.app import create_app
from lmserve.config import Settings
from lmserve.models.manager import ModelManager
from tests.conftest import MODEL_ID, Server
from tests.helpers import ASK_WEATHER, SCHEMAS, anthropic_tools, failing_generation, prompts

TOOLS = anthropic_tools()
ASK = ASK_WEATHER
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture()
def claude(server: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


def check_tool_uses(content: list[Any]) -> list[Any]:
    uses = [block for block in content if block.type == "tool_use"]
    assert uses
    for use in uses:
        assert use.id.startswith("toolu_") and isinstance(use.input, dict)
        jsonschema.validate(use.input, SCHEMAS[use.name])
    return uses


# -- text -------------------------------------------------------------------------------------


def test_a_message_parses_with_the_sdk(claude: anthropic.Anthropic, client: OpenAI) -> None:
    message = claude.messages.create(model=MODEL_ID, max_tokens=40, messages=HELLO)
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == MODEL_ID
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in {"end_turn", "max_tokens"} and message.stop_sequence is None
    # The same prompt as chat renders; Anthropic counts its cached share apart.
    chat = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=1)
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == chat.usage.prompt_tokens
    assert 0 < usage.output_tokens <= 40


def test_max_tokens_stops_with_max_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL_ID, max_tokens=3, messages=[{"role": "user", "content": "A long story."}]
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_system_and_text_blocks_reach_the_prompt(
    claude: anthropic.Anthropic, server: Server
) -> None:
    with prompts(server) as seen:
        claude.messages.create(
            model=MODEL_ID,
            max_tokens=1,
            system=[{"type": "text", "text": "Answer like a pirate."}],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "Hi, I am Ada."}]},
                {"role": "assistant", "content": "Ahoy Ada!"},
                {"role": "user", "content": "Who am I?"},
            ],
        )
        claude.messages.create(model=MODEL_ID, max_tokens=1, system="Be terse.", messages=HELLO)
    blocks, string = seen[-2:]
    order = ["Answer like a pirate.", "Hi, I am Ada.", "Ahoy Ada!", "Who am I?"]
    positions = [blocks.index(text) for text in order]
    assert positions == sorted(positions)
    assert "<|im_start|>system\nBe terse." in string


# -- as Claude Code sends it ------------------------------------------------------------------

# The fields of a Claude Code request beyond a plain message (captured from 2.1's requests).
CLAUDE_CODE_FIELDS: dict[str, Any] = {
    "thinking": {"type": "adaptive"},
    "output_config": {"effort": "medium"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "metadata": {"user_id": "user_abc_account__session_123"},
}
SERVER_TOOLS = [
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    {"type": "code_execution_20250825", "name": "code_execution"},
]


def test_a_claude_code_request_is_answered(server: Server, http: httpx.Client) -> None:
    """System messages inside ``messages``, cache_control on blocks and tools, thinking,
    output_config, context_management, server tools, ``?beta=true``, beta headers and a
    ``max_tokens`` far above the context: all accepted, the answer capped by the context."""
    cached = {"type": "ephemeral"}
    tools = [{**tool, "cache_control": cached} for tool in TOOLS]
    with prompts(server) as seen:
        response = http.post(
            "/v1/messages?beta=true",
            headers={
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
                "x-api-key": "any",
            },
            json={
                "model": MODEL_ID,
                "max_tokens": 32000,
                "system": [
                    {"type": "text", "text": "You are a coding agent.", "cache_control": cached}
                ],
                "messages": [
                    {"role": "system", "content": "The project is in Python."},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "Say hi.", "cache_control": cached}],
                    },
                ],
                "tools": [*tools, *SERVER_TOOLS],
                "temperature": 1,
                **CLAUDE_CODE_FIELDS,
            },
        )
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["type"] == "message" and message["stop_reason"] in {"end_turn", "max_tokens"}
    assert response.headers["x-lmserve-tools-left-out"] == (
        "web_search_20250305, code_execution_20250825"
    )
    prompt = seen[-1]
    system = prompt[: prompt.index("<|im_start|>user")]
    assert "You are a coding agent.\n\nThe project is in Python." in system
    assert "get_weather" in prompt and "code_execution" not in prompt
    assert prompt.count("<|im_start|>system") == 1


def test_max_tokens_far_beyond_the_context_is_accepted(claude: anthropic.Anthropic) -> None:
    """Claude Code asks for 32,000 tokens of a model with a 4,096-token context: the answer is
    what fits (the engine stops at the context's end), not a 400."""
    with claude.messages.stream(model=MODEL_ID, max_tokens=1_000_000, messages=HELLO) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0


def test_the_root_answers_head_and_get(http: httpx.Client) -> None:
    assert http.head("/").status_code == 200
    root = http.get("/")
    assert root.status_code == 200 and root.json()["name"] == "lmserve"


def test_the_sdk_beta_client_streams_with_thinking_on(claude: anthropic.Anthropic) -> None:
    with claude.beta.messages.stream(
        model=MODEL_ID,
        max_tokens=20,
        messages=HELLO,
        thinking={"type": "enabled", "budget_tokens": 1024},
        betas=["interleaved-thinking-2025-05-14"],
    ) as stream:
        text = stream.get_final_text()
        final = stream.get_final_message()
    assert final.stop_reason in {"end_turn", "max_tokens"} and final.usage.output_tokens > 0
    assert text == "".join(block.text for block in final.content if block.type == "text")


# This SDK has no sampling arguments (newer Claude models take none); the API still does.
GREEDY = {"temperature": 0, "top_k": 1}


def greedy_text(claude: anthropic.Anthropic) -> str:
    message = claude.messages.create(
        model=MODEL_ID, max_tokens=30, messages=HELLO, extra_body=GREEDY
    )
    return message.content[0].text


def test_a_stop_sequence_ends_the_message_and_is_named(claude: anthropic.Anthropic) -> None:
    text = greedy_text(claude)
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    message = claude.messages.create(
        model=MODEL_ID,
        max_tokens=30,
        extra_body=GREEDY,
        messages=HELLO,
        stop_sequences=["NEVER-IN-THE-TEXT", stop],
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == text[: text.index(stop)]
    with claude.messages.stream(
        model=MODEL_ID, max_tokens=30, messages=HELLO, stop_sequences=[stop], extra_body=GREEDY
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", range(2))
def test_structured_output_matches_the_schema(claude: anthropic.Anthropic, seed: int) -> None:
    message = claude.messages.create(
        model=MODEL_ID,
        max_tokens=200,
        messages=[{"role": "user", "content": "Invent a person."}],
        output_config={"format": {"type": "json_schema", "schema": PERSON}},
        extra_body={"seed": seed, "temperature": 1.0},
    )
    assert message.stop_reason == "end_turn"
    jsonschema.validate(json.loads(message.content[0].text), PERSON)


# -- streaming --------------------------------------------------------------------------------


def test_streamed_text_comes_in_anthropics_event_order(claude: anthropic.Anthropic) -> None:
    events = list(
        claude.messages.create(model=MODEL_ID, max_tokens=200, messages=HELLO, stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start = events[0].message
    assert start.content == [] and start.usage.input_tokens > 0 and start.stop_reason is None
    assert events[1].content_block.type == "text" and events[1].index == 0
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens > 0
    with claude.messages.stream(model=MODEL_ID, max_tokens=200, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_the_wire_format_names_each_event_and_pings(server: Server, http: httpx.Client) -> None:
    body = {"model": MODEL_ID, "max_tokens": 3, "messages": HELLO, "stream": True}
    with http.stream("POST", "/v1/messages", json=body) as response:
        blocks = response.read().decode().strip().split("\n\n")
    names = []
    for block in blocks:
        event_line, data_line = block.split("\n")
        names.append(event_line.removeprefix("event: "))
        assert json.loads(data_line.removeprefix("data: "))["type"] == names[-1]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-1] == "message_stop"


# -- tools ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_tool_choice_any_forces_valid_tool_use(claude: anthropic.Anthropic, seed: int) -> None:
    message = claude.messages.create(
        model=MODEL_ID,
        max_tokens=200,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "any"},
        extra_body={"seed": seed, "temperature": 1.0},
    )
    check_tool_uses(message.content)
    assert message.stop_reason == "tool_use"


def test_a_named_tool_is_used_once_without_parallel_use(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL_ID,
        max_tokens=200,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "add", "disable_parallel_tool_use": True},
    )
    uses = check_tool_uses(message.content)
    assert [use.name for use in uses] == ["add"]


def test_streamed_tool_use_reassembles_with_the_sdk_helper(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL_ID,
        max_tokens=200,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    (use,) = check_tool_uses(final.content)
    assert final.stop_reason == "tool_use"
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["tool_use"]
    assert starts[0].content_block.input == {} and starts[0].content_block.id == use.id
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert {d.type for d in deltas} == {"input_json_delta"}
    assert json.loads("".join(d.partial_json for d in deltas)) == use.input


def test_tool_use_and_tool_results_in_the_history_render(
    claude: anthropic.Anthropic, server: Server
) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"temp_c": 21}'},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "station offline"}],
                    "is_error": True,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    with prompts(server) as seen:
        message = claude.messages.create(
            model=MODEL_ID, max_tokens=20, messages=history, tools=TOOLS
        )
    assert message.content
    prompt = seen[-1]
    assert (
        'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
        in prompt
    )
    results = [
        '<tool_response>\n{"temp_c": 21}\n</tool_response>',
        "<tool_response>\nError: station offline\n</tool_response>",
        "And tomorrow?",
    ]
    positions = [prompt.index(text) for text in results]
    assert positions == sorted(positions)


def test_tool_choice_none_leaves_the_tools_out(claude: anthropic.Anthropic, server: Server) -> None:
    with prompts(server) as seen:
        claude.messages.create(
            model=MODEL_ID, max_tokens=1, messages=ASK, tools=TOOLS, tool_choice={"type": "none"}
        )
        claude.messages.create(model=MODEL_ID, max_tokens=1, messages=ASK, tools=TOOLS)
    without, with_tools = seen[-2:]
    assert "get_weather" not in without and "get_weather" in with_tools


def test_count_tokens_matches_the_prompt(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model=MODEL_ID, messages=HELLO, tools=TOOLS)
    message = claude.messages.create(model=MODEL_ID, max_tokens=1, messages=HELLO, tools=TOOLS)
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + usage.cache_read_input_tokens


# -- errors -----------------------------------------------------------------------------------


def anthropic_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == error_type
    assert body["error"]["message"]
    return body["error"]["message"]


GOOD = {"model": MODEL_ID, "max_tokens": 5, "messages": HELLO}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('{"model": ', "JSON"),
        ({"model": MODEL_ID, "messages": HELLO}, "max_tokens"),
        ({**GOOD, "temperature": 1.5}, "temperature"),
        ({**GOOD, "messages": []}, "messages"),
        ({**GOOD, "messages": [{"role": "system", "content": "x"}]}, "user or assistant"),
        ({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({**GOOD, "thinking": {"type": "sometimes"}}, "thinking.type"),
        ({**GOOD, "output_config": {"effort": "extreme"}}, "output_config.effort"),
        ({**GOOD, "tools": [{"name": "f"}]}, "input_schema"),
        (
            {
                **GOOD,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "x",
                                },
                            }
                        ],
                    }
                ],
            },
            "image",
        ),
        ({**GOOD, "tools": TOOLS[:1], "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
        ({**GOOD, "tool_choice": {"type": "tool"}}, "name"),
    ],
)
def test_bad_requests_are_400_in_anthropics_shape(
    http: httpx.Client, body: dict[str, Any] | str, named: str
) -> None:
    if isinstance(body, str):
        response = http.post(
            "/v1/messages", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = http.post("/v1/messages", json=body)
    assert named in anthropic_error(response, 400, "invalid_request_error")


def test_the_sdk_raises_its_own_errors(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=HELLO)
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=MODEL_ID, max_tokens=5, messages=HELLO, extra_body={"temperature": 2.0}
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"


KEY = "sk-lmserve-anthropic-7c1d"


@pytest.fixture()
def keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """An in-process app with an API key and a small body cap (no model: none is needed)."""
    monkeypatch.setenv("LMSERVE_HOME", str(tmp_path))
    settings = Settings(api_keys=(KEY,), max_body_size=10_000)
    app = create_app(ModelManager(tmp_path / "models", settings), settings=settings)
    with TestClient(app, base_url="http://127.0.0.1:1234") as client:
        yield client


def test_refusals_before_the_route_are_in_anthropics_shape(keyed: TestClient) -> None:
    body = {**GOOD, "model": "no-such-model"}
    missing = keyed.post("/v1/messages", json=body)
    assert "API key" in anthropic_error(missing, 401, "authentication_error")
    wrong = keyed.post("/v1/messages", json=body, headers={"x-api-key": "wrong"})
    anthropic_error(wrong, 401, "authentication_error")
    # The key as the anthropic SDK sends it gets through, to the next refusal.
    accepted = keyed.post("/v1/messages", json=body, headers={"x-api-key": KEY})
    assert "no-such-model" in anthropic_error(accepted, 404, "not_found_error")
    huge = {**GOOD, "system": "x" * 20_000}
    too_large = keyed.post("/v1/messages", json=huge, headers={"x-api-key": KEY})
    anthropic_error(too_large, 413, "request_too_large")
    foreign = keyed.post(
        "/v1/messages", json=body, headers={"x-api-key": KEY, "host": "evil.example"}
    )
    anthropic_error(foreign, 403, "permission_error")
    # The OpenAI routes keep OpenAI's shape.
    openai_route = keyed.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
    assert openai_route.status_code == 401 and set(openai_route.json()) == {"error"}
    keyed.app.state.lifecycle.draining = True  # type: ignore[attr-defined]
    draining = keyed.post("/v1/messages", json=body, headers={"x-api-key": KEY})
    anthropic_error(draining, 503, "overloaded_error")
    assert draining.headers["retry-after"]


def test_the_sdk_with_a_key_reaches_the_model(keyed: TestClient) -> None:
    sdk = anthropic.Anthropic(
        base_url="http://127.0.0.1:1234", api_key=KEY, max_retries=0, http_client=keyed
    )
    with pytest.raises(anthropic.NotFoundError):  # past the key check: no model here
        sdk.messages.create(model="no-such-model", max_tokens=5, messages=HELLO)
    refused = anthropic.Anthropic(
        base_url="http://127.0.0.1:1234", api_key="wrong", max_retries=0, http_client=keyed
    )
    with pytest.raises(anthropic.AuthenticationError):
        refused.messages.create(model="no-such-model", max_tokens=5, messages=HELLO)


# -- events from chat chunks (no model needed) -------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_reasoning_then_text_then_a_call_are_three_blocks() -> None:
    events = MessageEvents(SimpleNamespace(), SimpleNamespace())  # type: ignore[arg-type]
    produced = []
    for piece in (
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Hmm."}),
        chunk({"content": "Checking."}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "f"}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}),
        chunk({}, "tool_calls"),
    ):
        produced += events.feed(piece)
    assert [(e["type"], e["index"]) for e in produced] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
    ]
    assert produced[0]["content_block"]["type"] == "thinking"
    assert produced[1]["delta"] == {"type": "thinking_delta", "thinking": "Hmm."}
    assert produced[6]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_abc",
        "name": "f",
        "input": {},
    }
    assert produced[7]["delta"] == {"type": "input_json_delta", "partial_json": '{"x": 1}'}


async def test_a_failure_mid_stream_ends_with_an_error_event() -> None:
    generation = failing_generation()
    turn = MessageTurn()
    turn._prepared = generation.prepared
    produced = [event async for event in turn.events(generation)]
    assert [event["type"] for event in produced] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    assert produced[-1]["error"]["type"] == "api_error"
    assert "decode failed" in produced[-1]["error"]["message"]
