"""Finding tool calls and reasoning in model output, whole and streamed (pure logic)."""

from __future__ import annotations

import json

import pytest

from lmserve.api.common.protocol import ToolDefinition
from lmserve.api.common.reasoning import ReasoningSplitter, split_reasoning
from lmserve.api.common.tools import ToolCallStream, parse_tool_calls

TOOLS = [
    ToolDefinition.model_validate(
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ),
    ToolDefinition.model_validate({"type": "function", "function": {"name": "add"}}),
]


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (
            'Sure.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
            "Sure.",
            [("get_weather", {"city": "Paris"})],
        ),
        (
            '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n'
            '<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>',
            None,
            [("add", {"a": 1}), ("add", {"a": 2})],
        ),
        (
            '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 3, "b": 4}}]',
            None,
            [("add", {"a": 3, "b": 4})],
        ),
        (
            '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}',
            None,
            [("get_weather", {"city": "Oslo"})],
        ),
        (
            '{"name": "get_weather", "parameters": {"city": "Rome"}}',
            None,
            [("get_weather", {"city": "Rome"})],
        ),
        (
            '{"name": "unknown_tool", "arguments": {}}',
            '{"name": "unknown_tool", "arguments": {}}',
            [],
        ),
        ("Just an answer.", "Just an answer.", []),
        (
            '<tool_call>{"name": "add", "arguments": {broken</tool_call>',
            '<tool_call>{"name": "add", "arguments": {broken</tool_call>',
            [],
        ),
    ],
)
def test_parse_tool_calls(text: str, content: str | None, calls: list) -> None:
    found_content, found = parse_tool_calls(text, TOOLS)
    assert found_content == content
    assert [(c.name, json.loads(c.arguments)) for c in found] == calls
    assert all(c.id.startswith("call_") for c in found)


def stream(text: str, size: int) -> tuple[str, list]:
    parser = ToolCallStream(TOOLS)
    sent = "".join(parser.feed(text[i : i + size]) for i in range(0, len(text), size))
    rest, calls = parser.finish()
    return sent + rest, calls


@pytest.mark.parametrize("size", [1, 3, 7, 100])
def test_streamed_calls_never_leak_markers(size: int) -> None:
    text = (
        'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}'
        "</tool_call>"
    )
    parser = ToolCallStream(TOOLS)
    pieces = [parser.feed(text[i : i + size]) for i in range(0, len(text), size)]
    assert "".join(pieces) == "Let me check. "
    assert all("<" not in piece for piece in pieces)
    _, calls = parser.finish()
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Lima"})]


@pytest.mark.parametrize("size", [1, 4, 50])
def test_streamed_plain_text_passes_through(size: int) -> None:
    text = "No tools needed: 3 < 4 and {braces} are fine."
    assert stream(text, size) == (text, [])


@pytest.mark.parametrize("size", [1, 5, 100])
def test_reasoning_is_split_from_the_answer(size: int) -> None:
    text = "<think>\nThe user greets me.\n</think>\n\nHello there!"
    splitter = ReasoningSplitter()
    reasoning = answer = ""
    for i in range(0, len(text), size):
        r, a = splitter.feed(text[i : i + size])
        reasoning, answer = reasoning + r, answer + a
    r, a = splitter.finish()
    assert (reasoning + r).strip() == "The user greets me."
    assert answer + a == "Hello there!"
    assert split_reasoning(text) == ("The user greets me.", "Hello there!")


def test_no_reasoning_and_late_think_tags_stay_content() -> None:
    assert split_reasoning("Plain answer.") == (None, "Plain answer.")
    assert split_reasoning("Answer with <think> inside.") == (None, "Answer with <think> inside.")


def test_reply_that_starts_inside_reasoning() -> None:
    # Templates that open <think> in the prompt: the reply starts with the thought.
    assert split_reasoning("hmm.</think>Yes.", starts_inside=True) == ("hmm.", "Yes.")
