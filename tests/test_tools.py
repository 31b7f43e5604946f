"""Function calling with the official SDK: forced calls parse, streams reassemble."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.conftest import MODEL_ID, Server
from tests.helpers import ASK_WEATHER, SCHEMAS, chat_tools, prompts

TOOLS = chat_tools()
ASK = ASK_WEATHER


def check_calls(calls: Any) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", range(6))
def test_required_tool_choice_always_gives_a_valid_call(client: OpenAI, seed: int) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        seed=seed,
        temperature=1.0,
        max_tokens=200,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    check_calls(choice.message.tool_calls)


def test_named_tool_choice_calls_that_function(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        max_tokens=200,
        parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "add"}},
    )
    calls = completion.choices[0].message.tool_calls
    assert [call.function.name for call in calls] == ["add"]
    check_calls(calls)


def test_streamed_tool_calls_reassemble_with_the_sdk_helper(client: OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=200,
        seed=3,
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    check_calls(final.choices[0].message.tool_calls)


def test_streamed_tool_call_delta_shape(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            max_tokens=200,
            seed=5,
            stream=True,
            parallel_tool_calls=False,
        )
    )
    deltas = [
        c.choices[0].delta.tool_calls[0]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    ]
    first, *rest = deltas
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function.name in SCHEMAS and first.function.arguments == ""
    assert rest and all(d.id is None and d.function.name is None for d in rest)
    json.loads("".join(d.function.arguments for d in rest))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tools_reach_the_prompt_unless_choice_is_none(client: OpenAI, server: Server) -> None:
    with prompts(server) as seen:
        client.chat.completions.create(model=MODEL_ID, messages=ASK, tools=TOOLS, max_tokens=1)
        client.chat.completions.create(
            model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=1
        )
        client.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=1)
    with_tools, none_choice, plain = seen[-3:]
    assert "get_weather" in with_tools and "<tool_call>" in with_tools
    assert none_choice == plain and "get_weather" not in plain


def test_tool_results_in_the_history_render(client: OpenAI, server: Server) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21}'},
    ]
    with prompts(server) as seen:
        completion = client.chat.completions.create(
            model=MODEL_ID, messages=history, tools=TOOLS, max_tokens=20
        )
    assert completion.choices[0].message.content is not None
    prompt = seen[-1]
    assert '"name": "get_weather", "arguments": {"city": "Paris"}' in prompt
    assert '<tool_response>\n{"temperature_c": 21}\n</tool_response>' in prompt


def test_naming_an_unknown_tool_is_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert caught.value.body["param"] == "tool_choice"
