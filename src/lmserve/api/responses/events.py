"""The Responses API's streaming events, made from the chat stream's chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from lmserve.api.common.chat import chat_chunks
from lmserve.api.common.errors import APIError
from lmserve.api.common.generation import Generation
from lmserve.api.common.tool_loop import (
    ApprovalRequested,
    CallFinished,
    CallStarted,
    LoopEvent,
    ToolRounds,
)
from lmserve.api.responses.items import (
    function_call_item,
    mcp_call_item,
    message_item,
    new_item_id,
    reasoning_item,
)
from lmserve.api.responses.tools import ToolNames
from lmserve.mcp.toolset import CallOutcome, Toolset


class ApprovedCallLike(Protocol):
    approval_request_id: str
    call_id: str
    outcome: CallOutcome


class ResponseMaker(Protocol):
    """What the events need of their turn (``service.ResponseTurn``): the response's shape,
    the final response, the tools' names, and with MCP servers their rounds, toolset and
    approved calls; so this module never imports the service."""

    tool_names: ToolNames
    rounds: ToolRounds | None
    toolset: Toolset | None

    @property
    def approved(self) -> Sequence[ApprovedCallLike]: ...

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    async def complete(
        self, status: str, output: list[dict[str, Any]], generation: Generation
    ) -> dict[str, Any]: ...


class ResponseEvents:
    """The Responses streaming events of one turn, made from the chat stream's chunks.

    Chat chunks carry reasoning, content and tool-call deltas in the order the model wrote
    them (calls whole, at the end); each kind opens an output item, and the next kind (or the
    end) closes it, so items stream one after another as OpenAI's do.
    """

    def __init__(
        self, turn: ResponseMaker, generation: Generation, *, in_band_errors: bool = True
    ) -> None:
        self.turn = turn
        self.generation = generation
        self.in_band_errors = in_band_errors  # False: a failure raises (a whole response)
        self.calls: dict[str, int] = {}  # an MCP call's output index, by call id
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.finish_reason: str | None = None

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def lifecycle(self, kind: str, response: dict[str, Any]) -> dict[str, Any]:
        return self.event(kind, response=response)

    async def run(self) -> AsyncIterator[dict[str, Any]]:
        yield self.lifecycle("response.created", self.turn.response("in_progress", []))
        yield self.lifecycle("response.in_progress", self.turn.response("in_progress", []))
        rounds = self.turn.rounds
        for event in self.mcp_preamble():
            yield event
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
            # Headers are gone already: the failure goes in-band, as OpenAI reports it.
            yield self.event(
                "error", code=exc.code or exc.error_type, message=exc.message, param=None
            )
            error = {"code": "server_error", "message": exc.message}
            yield self.lifecycle(
                "response.failed", self.turn.response("failed", self.output, error=error)
            )
            return
        status = "incomplete" if self.finish_reason == "length" else "completed"
        last = rounds.last if rounds is not None and rounds.last is not None else self.generation
        response = await self.turn.complete(status, self.output, last)
        yield self.lifecycle(f"response.{status}", response)

    def mcp_preamble(self) -> list[dict[str, Any]]:
        """Each MCP server's listed tools, then the calls the client approved, run."""
        toolset = self.turn.toolset
        if toolset is None:
            return []
        events: list[dict[str, Any]] = []
        for label in toolset.servers():
            item = {
                "type": "mcp_list_tools",
                "id": new_item_id("mcpl"),
                "server_label": label,
                "tools": toolset.listed(label),
                "error": None,
            }
            events += self.start({**item, "tools": []})
            place = {"item_id": item["id"], "output_index": len(self.output) - 1}
            events.append(self.event("response.mcp_list_tools.in_progress", **place))
            events.append(self.event("response.mcp_list_tools.completed", **place))
            self.output[-1] = self.open = item
            events += self.close("completed")
        for approved in self.turn.approved:
            tool = approved.outcome.tool
            call = CallStarted(approved.call_id, tool, approved.outcome.arguments)
            events += self.feed_call(call, approved.approval_request_id)
            events += self.feed_call(CallFinished(approved.call_id, approved.outcome))
        return events

    def feed_call(
        self, event: LoopEvent, approval_request_id: str | None = None
    ) -> list[dict[str, Any]]:
        """An MCP call's items and events: ``mcp_call`` (its arguments, then its output or
        error), or an ``mcp_approval_request`` for the client to answer."""
        events = self.close("completed")
        if isinstance(event, ApprovalRequested):
            item = {
                "type": "mcp_approval_request",
                "id": new_item_id("mcpr"),
                "server_label": event.tool.server_label,
                "name": event.tool.name,
                "arguments": event.arguments,
            }
            events += self.start(item)
            return events + self.close("completed")
        if isinstance(event, CallStarted):
            item = mcp_call_item(
                new_item_id("mcp"),
                event.tool.server_label,
                event.tool.name,
                event.arguments,
                approval_request_id,
            )
            events += self.start(item)
            self.open = None  # stays in progress while other items may start
            index = len(self.output) - 1
            self.calls[event.call_id] = index
            place = {"item_id": item["id"], "output_index": index}
            events.append(self.event("response.mcp_call.in_progress", **place))
            events.append(
                self.event("response.mcp_call_arguments.delta", **place, delta=event.arguments)
            )
            events.append(
                self.event("response.mcp_call_arguments.done", **place, arguments=event.arguments)
            )
            return events
        index = self.calls[event.call_id]
        item = self.output[index]
        outcome = event.outcome
        item["output"], item["error"] = outcome.output, outcome.error
        item["status"] = "completed" if outcome.ok else "failed"
        place = {"item_id": item["id"], "output_index": index}
        kind = "completed" if outcome.ok else "failed"
        events.append(self.event(f"response.mcp_call.{kind}", **place))
        events.append(self.event("response.output_item.done", output_index=index, item=item))
        return events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        choice = chunk["choices"][0]
        delta = choice["delta"]
        events: list[dict[str, Any]] = []
        if delta.get("reasoning_content"):
            if self.open is None or self.open["type"] != "reasoning":
                events += self.close("completed")
                events += self.start(reasoning_item(new_item_id("rs"), "", "in_progress"))
            events += self.text_delta("response.reasoning_text.delta", delta["reasoning_content"])
        if delta.get("content"):
            if self.open is None or self.open["type"] != "message":
                events += self.close("completed")
                events += self.start(message_item(new_item_id("msg"), "", "in_progress"))
            logprobs = (choice.get("logprobs") or {}).get("content") or []
            events += self.text_delta("response.output_text.delta", delta["content"], logprobs)
        for call in delta.get("tool_calls") or []:
            if call.get("id"):  # a new call: its name first, then its arguments
                events += self.close("completed")
                namespace, name = self.turn.tool_names.split(call["function"]["name"])
                item = function_call_item(
                    new_item_id("fc"), call["id"], name, "", "in_progress", namespace
                )
                events += self.start(item)
            elif self.open is not None and self.open["type"] == "function_call":
                arguments = call["function"]["arguments"]
                self.open["arguments"] += arguments
                events.append(
                    self.event(
                        "response.function_call_arguments.delta",
                        item_id=self.open["id"],
                        output_index=len(self.output) - 1,
                        delta=arguments,
                    )
                )
        if choice["finish_reason"] is not None:
            self.finish_reason = choice["finish_reason"]
            status = "incomplete" if self.finish_reason == "length" else "completed"
            if not self.output:  # an empty reply is still a message
                events += self.start(message_item(new_item_id("msg"), "", "in_progress"))
            events += self.close(status)
        return events

    def start(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.output.append(item)
        self.open = item
        index = len(self.output) - 1
        parts = item.get("content")
        added = {**item, "content": []} if parts is not None else dict(item)
        events = [self.event("response.output_item.added", output_index=index, item=added)]
        if parts is not None:
            events.append(
                self.event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part={**parts[0], "logprobs": []},  # the item's list keeps growing
                )
            )
        return events

    def text_delta(
        self, kind: str, text: str, logprobs: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        assert self.open is not None
        part = self.open["content"][0]
        part["text"] += text
        fields: dict[str, Any] = {}
        if kind == "response.output_text.delta":
            fields["logprobs"] = logprobs or []
            part["logprobs"] += logprobs or []
        return [
            self.event(
                kind,
                item_id=self.open["id"],
                output_index=len(self.output) - 1,
                content_index=0,
                delta=text,
                **fields,
            )
        ]

    def close(self, status: str) -> list[dict[str, Any]]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = len(self.output) - 1
        events = []
        if item["type"].startswith("mcp_"):
            pass  # no parts: it is done as it is
        elif item["type"] == "function_call":
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            item["status"] = "completed"
        else:
            part = item["content"][0]
            place = {"item_id": item["id"], "output_index": index, "content_index": 0}
            if item["type"] == "message":
                events.append(
                    self.event(
                        "response.output_text.done",
                        **place,
                        text=part["text"],
                        logprobs=part["logprobs"],
                    )
                )
            else:
                events.append(
                    self.event("response.reasoning_text.done", **place, text=part["text"])
                )
            events.append(self.event("response.content_part.done", **place, part=dict(part)))
            item["status"] = status
        events.append(self.event("response.output_item.done", output_index=index, item=item))
        return events
