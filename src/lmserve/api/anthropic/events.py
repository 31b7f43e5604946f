"""Anthropic's streaming events, and what the whole message and its events both use."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from lmserve.api.anthropic.errors import error_body
from lmserve.api.common.chat import chat_chunks
from lmserve.api.common.errors import APIError
from lmserve.api.common.generation import Generation, Prepared
from lmserve.api.common.tool_loop import CallFinished, CallStarted, LoopEvent, ToolRounds
from lmserve.engine.types import Finished


class MessageMaker(Protocol):
    """What the events need of their turn (``service.MessageTurn``): the message's shape and
    usage, so this module never imports the service that imports it."""

    @property
    def prepared(self) -> Prepared: ...

    def message(
        self,
        content: list[dict[str, Any]],
        stop: tuple[str | None, str | None],
        usage: dict[str, Any],
    ) -> dict[str, Any]: ...

    def usage(self, generation: Generation) -> dict[str, Any]: ...

    @property
    def rounds(self) -> ToolRounds | None: ...


def tool_use_id(call_id: str) -> str:
    """Chat's ``call_…`` ids under Anthropic's prefix (the same id, so logs still match)."""
    return f"toolu_{call_id.removeprefix('call_')}"


def mcp_tool_use_id(call_id: str) -> str:
    return f"mcptoolu_{call_id.removeprefix('call_')}"


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


class MessageEvents:
    """Anthropic's streaming events of one message, made from the chat stream's chunks.

    Each kind of delta (thinking, text, a tool call) opens a content block and the next kind
    (or the end) closes it; a tool call's arguments arrive whole, as one ``input_json_delta``.
    """

    def __init__(
        self, turn: MessageMaker, generation: Generation, *, in_band_errors: bool = True
    ) -> None:
        self.turn = turn
        self.generation = generation
        self.in_band_errors = in_band_errors  # False: a failure raises (a whole message)
        self.blocks = 0  # content blocks started so far
        self.open: str | None = None  # the type of the block being streamed
        self.finish_reason: str | None = None
        self.content: list[dict[str, Any]] = []  # the blocks so far, whole
        self._json = ""  # the open tool call's arguments so far
        self.stop: tuple[str, str | None] = ("end_turn", None)

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
        rounds = self.turn.rounds
        source = (
            rounds.events(self.generation)
            if rounds is not None
            else chat_chunks(self.generation, include_usage=False)
        )
        try:
            async for chunk in source:
                events = self.feed(chunk) if isinstance(chunk, dict) else self.feed_call(chunk)
                for event in events:
                    yield event
        except APIError as exc:
            if not self.in_band_errors:
                raise
            # Headers are gone already: the failure goes in-band, as Anthropic reports it.
            yield error_body(exc.status_code, exc.message)
            return
        if rounds is not None and rounds.last is not None:
            self.generation = rounds.last
        self.stop = stop_of(self.finish_reason, self.generation.finished[0])
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop[0], "stop_sequence": self.stop[1]},
            # Totals, now that the cached share of the prompt is known.
            "usage": self.turn.usage(self.generation),
        }
        yield {"type": "message_stop"}

    def whole_message(self) -> dict[str, Any]:
        """The message the events made, whole (after :meth:`run`)."""
        return self.turn.message(self.content, self.stop, self.turn.usage(self.generation))

    def feed_call(self, event: LoopEvent) -> list[dict[str, Any]]:
        """An MCP call the server ran: an ``mcp_tool_use`` block, then its
        ``mcp_tool_result``."""
        if isinstance(event, CallStarted):
            block = {
                "type": "mcp_tool_use",
                "id": mcp_tool_use_id(event.call_id),
                "name": event.tool.name,
                "server_name": event.tool.server_label,
                "input": {},
            }
            events = self.start(block)
            events.append(self.delta({"type": "input_json_delta", "partial_json": event.arguments}))
            return events + self.close()
        if isinstance(event, CallFinished):
            outcome = event.outcome
            block = {
                "type": "mcp_tool_result",
                "tool_use_id": mcp_tool_use_id(event.call_id),
                "is_error": not outcome.ok,
                "content": [{"type": "text", "text": outcome.output or outcome.error or ""}],
            }
            return self.start(block) + self.close()
        return []  # approvals: Anthropic's connector asks for none

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
        self.content.append(json.loads(json.dumps(block)))  # its own copy, filled by deltas
        self.blocks += 1
        self.open = block["type"]
        return events

    def delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        block = self.content[-1]
        if delta["type"] == "text_delta":
            block["text"] += delta["text"]
        elif delta["type"] == "thinking_delta":
            block["thinking"] += delta["thinking"]
        elif delta["type"] == "input_json_delta":
            self._json += delta["partial_json"]
        return {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}

    def close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        if self.open in ("tool_use", "mcp_tool_use"):
            self.content[-1]["input"] = tool_input(self._json)
        self._json = ""
        self.open = None
        return [{"type": "content_block_stop", "index": self.blocks - 1}]
