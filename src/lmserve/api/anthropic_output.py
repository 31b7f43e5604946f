"""What an Anthropic Messages request sends back: the message, whole or as events, and errors.

The request is served as a chat completion (see :mod:`lmserve.api.anthropic`); the whole
message is made from :func:`chat_completion`, the events from :func:`chat_chunks`, so
reasoning, tool calls and streaming hold-back behave exactly as on the OpenAI routes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from lmserve.api.chat import ChatTurn, chat_chunks, chat_completion
from lmserve.api.errors import APIError
from lmserve.api.generation import Generation
from lmserve.engine.types import Finished

# Anthropic's error types by HTTP status; lmserve keeps its statuses (503, not 529).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def tool_use_id(call_id: str) -> str:
    """Chat's ``call_…`` ids under Anthropic's prefix (the same id, so logs still match)."""
    return f"toolu_{call_id.removeprefix('call_')}"


def tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        value = None
    # The call parser only accepts objects; anything else would be a bug, not the model.
    return value if isinstance(value, dict) else {}


def stop_of(finish_reason: str | None, finished: Finished | None) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` from chat's finish reason."""
    if finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if finished is not None and finished.stopped_by is not None:
        return "stop_sequence", finished.stopped_by
    return "end_turn", None


class MessageTurn(ChatTurn):
    """One Messages request: its id, and the message it makes."""

    def __init__(self) -> None:
        super().__init__(f"msg_{secrets.token_hex(12)}")

    def message(
        self,
        content: list[dict[str, Any]],
        stop: tuple[str | None, str | None],
        usage: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.prepared.model.identifier,
            "content": content,
            "stop_reason": stop[0],
            "stop_sequence": stop[1],
            "usage": usage,
        }

    @staticmethod
    def usage(generation: Generation) -> dict[str, Any]:
        # Anthropic counts cached prompt tokens apart: input + cache reads = the whole prompt.
        usage = generation.usage
        cached = usage.prompt_tokens_details.cached_tokens
        return {
            "input_tokens": usage.prompt_tokens - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": usage.completion_tokens,
        }

    async def respond(self, generation: Generation) -> dict[str, Any]:
        completion = await chat_completion(generation)
        choice = completion.choices[0]
        answer = choice.message
        content: list[dict[str, Any]] = []
        if answer.reasoning_content:
            content.append(
                {"type": "thinking", "thinking": answer.reasoning_content, "signature": ""}
            )
        if answer.content or not answer.tool_calls:
            content.append({"type": "text", "text": answer.content or ""})
        for call in answer.tool_calls or []:
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_use_id(call.id),
                    "name": call.function.name,
                    "input": tool_input(call.function.arguments),
                }
            )
        stop = stop_of(choice.finish_reason, generation.finished[0])
        return self.message(content, stop, self.usage(generation))

    def events(self, generation: Generation) -> AsyncIterator[dict[str, Any]]:
        return MessageEvents(self, generation).run()


class MessageEvents:
    """Anthropic's streaming events of one message, made from the chat stream's chunks.

    Each kind of delta (thinking, text, a tool call) opens a content block and the next kind
    (or the end) closes it; a tool call's arguments arrive whole, as one ``input_json_delta``.
    """

    def __init__(self, turn: MessageTurn, generation: Generation) -> None:
        self.turn = turn
        self.generation = generation
        self.blocks = 0  # content blocks started so far
        self.open: str | None = None  # the type of the block being streamed
        self.finish_reason: str | None = None

    async def run(self) -> AsyncIterator[dict[str, Any]]:
        prompt_tokens = sum(len(tokens) for tokens in self.turn.prepared.prompt_tokens)
        start_usage = {
            "input_tokens": prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 0,
        }
        message = self.turn.message([], (None, None), start_usage)
        yield {"type": "message_start", "message": message}
        yield {"type": "ping"}
        try:
            async for chunk in chat_chunks(self.generation, include_usage=False):
                for event in self.feed(chunk):
                    yield event
        except APIError as exc:
            # Headers are gone already: the failure goes in-band, as Anthropic reports it.
            yield error_body(exc.status_code, exc.message)
            return
        stop_reason, stop_sequence = stop_of(self.finish_reason, self.generation.finished[0])
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            # Totals, now that the cached share of the prompt is known.
            "usage": self.turn.usage(self.generation),
        }
        yield {"type": "message_stop"}

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        choice = chunk["choices"][0]
        delta = choice["delta"]
        events: list[dict[str, Any]] = []
        if delta.get("reasoning_content"):
            if self.open != "thinking":
                events += self.start({"type": "thinking", "thinking": "", "signature": ""})
            events.append(
                self.delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]})
            )
        if delta.get("content"):
            if self.open != "text":
                events += self.start({"type": "text", "text": ""})
            events.append(self.delta({"type": "text_delta", "text": delta["content"]}))
        for call in delta.get("tool_calls") or []:
            if call.get("id"):  # a new call: its name first, then its arguments
                block = {
                    "type": "tool_use",
                    "id": tool_use_id(call["id"]),
                    "name": call["function"]["name"],
                    "input": {},
                }
                events += self.start(block)
            elif self.open == "tool_use":
                arguments = call["function"]["arguments"]
                events.append(self.delta({"type": "input_json_delta", "partial_json": arguments}))
        if choice["finish_reason"] is not None:
            self.finish_reason = choice["finish_reason"]
            if self.blocks == 0:  # an empty reply is still one (empty) text block
                events += self.start({"type": "text", "text": ""})
            events += self.close()
        return events

    def start(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self.close()
        events.append({"type": "content_block_start", "index": self.blocks, "content_block": block})
        self.blocks += 1
        self.open = block["type"]
        return events

    def delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}

    def close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.blocks - 1}]
