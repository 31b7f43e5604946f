"""OpenAI's Responses API (``/v1/responses``) on the real server, with the official SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from lmserve.api.responses.events import ResponseEvents
from lmserve.api.responses.protocol import ResponsesRequest
from lmserve.api.responses.service import ResponseTurn
from lmserve.api.responses.tools import ToolNames, call_name
from tests.conftest import MODEL_ID, Server, running_server
from tests.helpers import SCHEMAS, failing_generation, prompts, responses_tools

TOOLS = responses_tools()
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def check_calls(output: list[Any]) -> list[Any]:
    calls = [item for item in output if item.type == "function_call"]
    assert calls
    for call in calls:
        assert call.id.startswith("fc_") and call.call_id.startswith("call_")
        assert call.status == "completed"
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    return calls


# -- text -------------------------------------------------------------------------------------


def test_a_text_response_parses_with_the_sdk(client: OpenAI) -> None:
    response = client.responses.create(
        model=MODEL_ID,
        input="Say hello.",
        max_output_tokens=40,
        metadata={"k": "v"},
        extra_body={"seed": 1},
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == MODEL_ID and response.status in {"completed", "incomplete"}
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.content[0].type == "output_text"
    assert response.output_text == message.content[0].text != ""
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 40
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    # The echoed settings: LM Studio's defaults where the request left them out.
    assert response.temperature == pytest.approx(0.8) and response.top_p == pytest.approx(0.95)
    assert response.tool_choice == "auto" and response.tools == []
    assert response.parallel_tool_calls is True and response.text.format.type == "text"
    assert response.metadata == {"k": "v"} and response.max_output_tokens == 40


def test_the_token_limit_makes_the_response_incomplete(client: OpenAI) -> None:
    response = client.responses.create(
        model=MODEL_ID, input="Tell me a long story.", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3
    assert response.output[0].status == "incomplete"


def test_input_messages_and_instructions_reach_the_prompt(client: OpenAI, server: Server) -> None:
    with prompts(server) as seen:
        client.responses.create(
            model=MODEL_ID,
            instructions="Answer like a pirate.",
            input=[
                {"role": "developer", "content": "Keep it short."},
                {"type": "message", "role": "user", "content": "Hi, I am Ada."},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Ahoy Ada!"}]},
                {"role": "user", "content": [{"type": "input_text", "text": "Who am I?"}]},
            ],
            max_output_tokens=1,
        )
    prompt = seen[-1]
    order = ["Answer like a pirate.", "Keep it short.", "Hi, I am Ada.", "Ahoy Ada!", "Who am I?"]
    positions = [prompt.index(text) for text in order]
    assert positions == sorted(positions)


# -- streaming --------------------------------------------------------------------------------


def test_streamed_text_comes_in_openais_event_order(client: OpenAI) -> None:
    # Greedy: the answer ends well within the limit (sampled, it sometimes ran past it, and a
    # response cut short ends with response.incomplete instead).
    with client.responses.stream(
        model=MODEL_ID, input="Say hello.", max_output_tokens=200, temperature=0
    ) as s:
        events = list(s)
        final = s.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    text = "".join(delta.delta for delta in deltas)
    assert text and text == final.output_text
    assert {(d.item_id, d.output_index, d.content_index) for d in deltas} == {
        (final.output[0].id, 0, 0)
    }
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"
    assert final.usage.output_tokens > 0


def test_a_stream_cut_short_ends_with_response_incomplete(client: OpenAI) -> None:
    events = list(
        client.responses.create(model=MODEL_ID, input="A story.", max_output_tokens=2, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-2].type == "response.output_item.done"
    assert events[-2].item.status == "incomplete"


def test_the_wire_format_names_each_event(server: Server, http: httpx.Client) -> None:
    body = {"model": MODEL_ID, "input": "Hi", "max_output_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as response:
        blocks = response.read().decode().strip().split("\n\n")
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        assert json.loads(data_line[6:])["type"] == event_line[7:]
    assert "[DONE]" not in blocks[-1]


# -- tools ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_required_tool_choice_gives_valid_function_calls(client: OpenAI, seed: int) -> None:
    response = client.responses.create(
        model=MODEL_ID,
        input="What is the weather like in Paris today?",
        tools=TOOLS,
        tool_choice="required",
        extra_body={"seed": seed},
        temperature=1.0,
        max_output_tokens=200,
    )
    check_calls(response.output)
    assert response.tools[0].name == "get_weather" and response.tool_choice == "required"


def test_a_named_function_is_called_once_without_parallel_calls(client: OpenAI) -> None:
    response = client.responses.create(
        model=MODEL_ID,
        input="What is 2 plus 3?",
        tools=TOOLS,
        tool_choice={"type": "function", "name": "add"},
        parallel_tool_calls=False,
        max_output_tokens=200,
    )
    calls = check_calls(response.output)
    assert [call.name for call in calls] == ["add"]


def test_streamed_function_calls_reassemble_with_the_sdk_helper(client: OpenAI) -> None:
    with client.responses.stream(
        model=MODEL_ID,
        input="What is the weather like in Paris today?",
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=200,
        extra_body={"seed": 3},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    (call,) = check_calls(final.output)
    kinds = [event.type for event in events]
    start = kinds.index("response.output_item.added")
    assert kinds[start:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[start].item
    assert added.type == "function_call" and added.arguments == "" and added.name == call.name
    assert events[start + 2].arguments == call.arguments


def test_function_calls_and_their_outputs_in_the_input_render(
    client: OpenAI, server: Server
) -> None:
    with prompts(server) as seen:
        response = client.responses.create(
            model=MODEL_ID,
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city": "Paris"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'},
            ],
            tools=TOOLS,
            max_output_tokens=20,
        )
    assert response.output
    prompt = seen[-1]
    assert '"name": "get_weather", "arguments": {"city": "Paris"}' in prompt
    assert '<tool_response>\n{"temp_c": 21}\n</tool_response>' in prompt


# -- tools as Codex sends them: namespaces, hosted tools, history resent with store off --------

READ_FILE = {
    "type": "function",
    "name": "read_file",
    "description": "Read a file of the project",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string", "maxLength": 40}},
        "required": ["path"],
        "additionalProperties": False,
    },
}
FILES = {
    "type": "namespace",
    "name": "mcp__files__",
    "description": "The project's files",
    "tools": [READ_FILE],
}
CODEX_TOOLS = [*TOOLS, FILES, {"type": "web_search"}, {"type": "file_search"}]
# Fields Codex's requests carry that change nothing here; each must be accepted.
CODEX_FIELDS = {
    "store": False,
    "include": ["reasoning.encrypted_content"],
    "reasoning": {"effort": "medium", "summary": "auto"},
    "prompt_cache_key": "0a1b2c",
    "client_metadata": {"session": "s1"},
    "service_tier": "auto",
    "text": {"verbosity": "low"},
}
READ_NOTES = {"type": "function", "name": "read_file", "namespace": "mcp__files__"}


def test_a_namespaced_function_is_offered_qualified_and_called_with_its_namespace(
    http: httpx.Client, server: Server
) -> None:
    with prompts(server) as seen:
        response = http.post(
            "/v1/responses",
            json={
                "model": MODEL_ID,
                "input": "Read the file notes.txt.",
                "tools": CODEX_TOOLS,
                "tool_choice": READ_NOTES,
                "max_output_tokens": 100,
                **CODEX_FIELDS,
            },
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-lmserve-tools-left-out"] == "web_search, file_search"
    body = response.json()
    calls = [item for item in body["output"] if item["type"] == "function_call"]
    assert calls  # one or more: Codex allows parallel calls
    for call in calls:
        assert call["name"] == "read_file" and call["namespace"] == "mcp__files__"
        jsonschema.validate(json.loads(call["arguments"]), READ_FILE["parameters"])
    assert [tool["type"] for tool in body["tools"]][-3:] == [
        "namespace",
        "web_search",
        "file_search",
    ]
    prompt = seen[-1]
    assert '"name": "mcp__files__read_file"' in prompt  # the named one only, as forced
    assert "The project's files" in prompt
    assert "web_search" not in prompt and "file_search" not in prompt
    assert "left out hosted tools this server cannot run: web_search, file_search" in server.log()
    assert http.get(f"/v1/responses/{body['id']}").status_code == 404  # store: false


def test_a_streamed_namespaced_call_carries_its_namespace(client: OpenAI) -> None:
    with client.responses.stream(
        model=MODEL_ID,
        input="Read the file notes.txt.",
        tools=CODEX_TOOLS,  # type: ignore[arg-type]
        tool_choice=READ_NOTES,  # type: ignore[arg-type]
        max_output_tokens=100,
        store=False,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    added = next(e for e in events if e.type == "response.output_item.added").item.to_dict()
    assert added["type"] == "function_call" and added["namespace"] == "mcp__files__"
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and all(e.name == "read_file" for e in done)
    calls = [item.to_dict() for item in final.output if item.type == "function_call"]
    assert len(calls) == len(done)
    assert all(c["name"] == "read_file" and c["namespace"] == "mcp__files__" for c in calls)
    assert events[-1].type == "response.completed" and final.usage is not None
    assert final.usage.output_tokens > 0


def test_a_resent_history_with_a_namespaced_call_and_its_output_renders(
    http: httpx.Client, server: Server
) -> None:
    """With ``store: false`` the client sends the whole conversation again each turn."""
    history = [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Read notes.txt"}],
        },
        {
            "type": "function_call",
            "call_id": "call_7",
            "name": "read_file",
            "namespace": "mcp__files__",
            "arguments": '{"path": "notes.txt"}',
        },
        {"type": "function_call_output", "call_id": "call_7", "output": "buy milk"},
    ]
    with prompts(server) as seen:
        response = http.post(
            "/v1/responses",
            json={
                "model": MODEL_ID,
                "input": history,
                "tools": CODEX_TOOLS,
                "max_output_tokens": 16,
                **CODEX_FIELDS,
            },
        )
    assert response.status_code == 200, response.text
    prompt = seen[-1]
    assert '"name": "mcp__files__read_file", "arguments": {"path": "notes.txt"}' in prompt
    assert "<tool_response>\nbuy milk\n</tool_response>" in prompt


# -- structured output ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_a_json_schema_text_format_gives_matching_json(client: OpenAI, seed: int) -> None:
    response = client.responses.create(
        model=MODEL_ID,
        input="Invent a person.",
        text={
            "format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
        },
        max_output_tokens=200,
        extra_body={"seed": seed},
        temperature=1.0,
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), PERSON)
    assert response.text.format.type == "json_schema" and response.text.format.name == "person"


def test_a_json_object_text_format_streams_an_object(client: OpenAI) -> None:
    with client.responses.stream(
        model=MODEL_ID,
        input="Give me some JSON.",
        text={"format": {"type": "json_object"}},
        max_output_tokens=300,
        extra_body={"seed": 2},
    ) as stream:
        final = stream.get_final_response()
    assert isinstance(json.loads(final.output_text), dict)


# -- state ------------------------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation(client: OpenAI, server: Server) -> None:
    with prompts(server) as seen:
        first = client.responses.create(
            model=MODEL_ID,
            instructions="You are Captain Zed's assistant.",
            input="My boat is called Marigold.",
            max_output_tokens=20,
        )
        second = client.responses.create(
            model=MODEL_ID,
            input="What is my boat called?",
            previous_response_id=first.id,
            max_output_tokens=20,
        )
    assert second.previous_response_id == first.id
    prompt = seen[-1]
    exchange = ["My boat is called Marigold.", first.output_text, "What is my boat called?"]
    positions = [prompt.index(text) for text in exchange]
    assert positions == sorted(positions)
    # Instructions belong to their own request: OpenAI does not carry them over.
    # (The model may say the name in its answer, which is carried over: look for the sentence.)
    instructions = "You are Captain Zed's assistant."
    assert instructions in seen[-2] and instructions not in prompt
    assert second.usage.input_tokens_details.cached_tokens > 0  # the first turn's prefix


def test_earlier_output_items_can_be_sent_back_as_input(client: OpenAI, server: Server) -> None:
    first = client.responses.create(model=MODEL_ID, input="Name a colour.", max_output_tokens=10)
    history = [{"role": "user", "content": "Name a colour."}]
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"role": "user", "content": "Another one?"})
    with prompts(server) as seen:
        client.responses.create(model=MODEL_ID, input=history, max_output_tokens=5)
    assert first.output_text in seen[-1]


def test_stored_responses_can_be_retrieved_and_deleted(client: OpenAI) -> None:
    response = client.responses.create(model=MODEL_ID, input="Hi", max_output_tokens=5)
    fetched = client.responses.retrieve(response.id)
    assert fetched.id == response.id and fetched.output_text == response.output_text
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_input_items_list_the_conversation_that_made_a_response(
    client: OpenAI, http: httpx.Client
) -> None:
    first = client.responses.create(
        model=MODEL_ID, input="My boat is called Marigold.", max_output_tokens=8
    )
    second = client.responses.create(
        model=MODEL_ID,
        input=[{"role": "user", "content": "What is it called?"}],
        previous_response_id=first.id,
        max_output_tokens=8,
    )
    page = client.responses.input_items.list(second.id, order="asc")
    kinds = [(item.type, item.role) for item in page.data]
    assert kinds == [("message", "user"), ("message", "assistant"), ("message", "user")]
    texts = [item.content[0].text for item in page.data]
    assert texts == ["My boat is called Marigold.", first.output_text, "What is it called?"]
    # The earlier answer keeps the id it had as output; every item has one.
    assert page.data[1].id == first.output[-1].id
    assert len({item.id for item in page.data}) == 3
    # Newest first by default; one item per page, followed with the SDK's auto-paging.
    newest = client.responses.input_items.list(second.id)
    assert [item.id for item in newest.data] == [item.id for item in page.data][::-1]
    paged = list(client.responses.input_items.list(second.id, order="asc", limit=1))
    assert [item.id for item in paged] == [item.id for item in page.data]
    assert client.responses.input_items.list(second.id, limit=1).has_more is True
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_nope")
    bad = http.get(f"/v1/responses/{second.id}/input_items", params={"limit": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


LOGPROBS = {
    "include": ["message.output_text.logprobs"],
    "top_logprobs": 3,
    "temperature": 0,
    "max_output_tokens": 8,
    "extra_body": {"repeat_penalty": 1.0},  # so greedy picks the raw distribution's top
}


def test_logprobs_come_with_the_text_when_included(client: OpenAI) -> None:
    response = client.responses.create(model=MODEL_ID, input="Say hello.", **LOGPROBS)
    [message] = response.output
    part = message.content[0]
    assert "".join(entry.token for entry in part.logprobs) == part.text
    for entry in part.logprobs:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.token == entry.top_logprobs[0].token  # greedy: the likeliest
    assert response.top_logprobs == 3
    plain = client.responses.create(model=MODEL_ID, input="Say hello.", max_output_tokens=4)
    assert plain.output[0].content[0].logprobs == []


def test_streamed_logprobs_follow_the_deltas(client: OpenAI) -> None:
    events = list(
        client.responses.create(model=MODEL_ID, input="Say hello.", stream=True, **LOGPROBS)
    )
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert all(delta.logprobs for delta in deltas)
    streamed = [entry.token for delta in deltas for entry in delta.logprobs]
    assert "".join(streamed) == "".join(delta.delta for delta in deltas)
    [done] = [event for event in events if event.type == "response.output_text.done"]
    assert [entry.token for entry in done.logprobs] == streamed
    final = events[-1].response
    assert [entry.token for entry in final.output[0].content[0].logprobs] == streamed


def test_includes_without_content_here_are_accepted_and_others_refused(
    client: OpenAI, http: httpx.Client
) -> None:
    # Codex asks for encrypted reasoning; there is none to give, and that is no error.
    response = client.responses.create(
        model=MODEL_ID,
        input="Hi",
        max_output_tokens=2,
        include=["reasoning.encrypted_content"],
        store=False,
    )
    assert response.status in {"completed", "incomplete"}
    bad = http.post(
        "/v1/responses", json={"model": MODEL_ID, "input": "Hi", "include": ["everything"]}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "include[0]"


@pytest.fixture(scope="module")
def small_context(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[Server]:
    with running_server(tmp_path_factory, default_model_file, "--context-length", "256") as s:
        yield s


def test_truncation_auto_drops_the_oldest_turns_to_fit(small_context: Server) -> None:
    filler = "The harbour log lists every boat and every tide of the day. " * 6  # ~80 tokens
    turns: list[dict[str, Any]] = []
    for number in range(1, 5):
        turns += [
            {"role": "user", "content": f"Turn {number}. {filler}"},
            {"role": "assistant", "content": f"Noted, turn {number}."},
        ]
    turns.append({"role": "user", "content": "Which turn is this? Turn 5."})
    client = OpenAI(base_url=small_context.api_url, api_key="x", max_retries=0)
    request: dict[str, Any] = {
        "model": MODEL_ID,
        "input": turns,
        "instructions": "Be brief.",
        "max_output_tokens": 4,
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**request)
    assert caught.value.body["code"] == "context_length_exceeded"
    with prompts(small_context) as seen:
        response = client.responses.create(**request, truncation="auto")
    assert response.truncation == "auto" and response.status in {"completed", "incomplete"}
    prompt = seen[-1]
    # The instructions and the newest turns stay; the oldest went, whole turns at a time.
    assert "Be brief." in prompt and "Turn 5." in prompt and "Turn 4." in prompt
    assert "Turn 1." not in prompt and "Noted, turn 1." not in prompt
    assert response.usage.input_tokens < 256


def test_unstored_responses_cannot_be_continued(client: OpenAI) -> None:
    response = client.responses.create(model=MODEL_ID, input="Hi", max_output_tokens=3, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(
            model=MODEL_ID, input="Again", previous_response_id=response.id, max_output_tokens=3
        )
    assert caught.value.body["param"] == "previous_response_id"


# -- errors -----------------------------------------------------------------------------------


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_an_unknown_previous_response_is_404(http: httpx.Client) -> None:
    response = http.post(
        "/v1/responses",
        json={"model": MODEL_ID, "input": "Hi", "previous_response_id": "resp_nope"},
    )
    error = openai_error(response, 404)
    assert error["code"] == "previous_response_not_found" and "resp_nope" in error["message"]


def test_an_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input="Hi")
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "", "input": "Hi"}, "model"),  # no model at all: test_unnamed_model.py
        ({"model": MODEL_ID, "input": "Hi", "temperature": 3}, "temperature"),
        ({"model": MODEL_ID, "input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": MODEL_ID, "input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"model": MODEL_ID, "input": "Hi", "tools": [{"type": "telepathy"}]}, "tools[0]"),
        (
            {"model": MODEL_ID, "input": "Hi", "tools": [{"type": "namespace", "name": "x"}]},
            "tools[0].tools",
        ),
        (
            {"model": MODEL_ID, "input": "Hi", "text": {"format": {"type": "json_schema"}}},
            "text.format",
        ),
        (
            {
                "model": MODEL_ID,
                "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "x"}]}],
            },
            "input[0].content[0].file_id",
        ),
        ({"model": MODEL_ID, "input": []}, "input"),
        (
            {
                "model": MODEL_ID,
                "input": "Hi",
                "tools": TOOLS[:1],
                "tool_choice": {"type": "function", "name": "nope"},
            },
            "tool_choice",
        ),
    ],
)
def test_bad_requests_are_400_in_openais_shape(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = openai_error(http.post("/v1/responses", json=body), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param


# -- events from chat chunks (no model needed) -------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_reasoning_becomes_a_reasoning_item_before_the_message() -> None:
    events = ResponseEvents(SimpleNamespace(), SimpleNamespace())  # type: ignore[arg-type]
    produced = []
    for piece in (
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Think"}),
        chunk({"reasoning_content": "ing."}),
        chunk({"content": "Answer"}),
        chunk({}, "stop"),
    ):
        produced += events.feed(piece)
    kinds = [event["type"] for event in produced]
    assert kinds == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    reasoning, message = events.output
    assert reasoning["type"] == "reasoning" and reasoning["content"][0]["text"] == "Thinking."
    assert message["content"][0]["text"] == "Answer" and message["status"] == "completed"
    assert [event["output_index"] for event in produced] == [0] * 7 + [1] * 6


async def test_a_failure_mid_stream_ends_with_error_and_response_failed() -> None:
    generation = failing_generation()
    turn = ResponseTurn(ResponsesRequest(model=MODEL_ID, input="Hi"), store=None)
    turn._prepared = generation.prepared
    produced = [event async for event in turn.events(generation)]
    assert [event["type"] for event in produced] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "error",
        "response.failed",
    ]
    assert "decode failed" in produced[-2]["message"]
    failed = produced[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert [event["sequence_number"] for event in produced] == list(range(len(produced)))


# -- tool names (no model needed) ---------------------------------------------------------------


def test_namespace_functions_are_qualified_and_split_back() -> None:
    body = ResponsesRequest.model_validate(
        {
            "model": "m",
            "input": "Hi",
            "tools": [
                TOOLS[0],
                FILES,
                {"type": "namespace", "name": "crm", "tools": [{**READ_FILE, "name": "find"}]},
                {"type": "web_search_preview"},
            ],
        }
    )
    names = ToolNames(body)
    offered = [tool.function.name for tool in names.offered]
    assert offered == ["get_weather", "mcp__files__read_file", "crm.find"]
    assert names.split("crm.find") == ("crm", "find")
    assert names.split("mcp__files__read_file") == ("mcp__files__", "read_file")
    assert names.split("get_weather") == (None, "get_weather")
    assert (
        names.offered[1].function.description == "The project's files\n\nRead a file of the project"
    )
    assert body.hosted_tools == ["web_search_preview"]
    assert call_name("find", "crm") == "crm.find" and call_name("find", None) == "find"
