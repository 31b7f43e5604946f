"""What a Responses request sends back: the ``response`` object, whole or as events.

A Responses request is served as a chat completion (see :mod:`lmserve.api.responses`); this
module turns the chat machinery's results into OpenAI's Responses shapes.  The whole object
comes from :func:`chat_completion`, the events from :func:`chat_chunks`, so reasoning,
tool-call parsing and streaming hold-back work exactly as they do for chat.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from lmserve.api.chat import ChatTurn, chat_chunks, chat_completion
from lmserve.api.errors import APIError, ContextLengthExceededError
from lmserve.api.generation import Generation, Prepared
from lmserve.api.protocol import AssistantMessage, ChatCompletionRequest, ChatMessage
from lmserve.api.responses_protocol import ResponsesRequest
from lmserve.models.loader import LoadedModel

# Called with (response id, the response, its output items) once a stored response is done.
Save = Callable[[str, dict[str, Any], list[dict[str, Any]]], None]


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_text(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    }


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [reasoning_text(text)],
        "status": status,
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def output_items(message: AssistantMessage, status: str) -> list[dict[str, Any]]:
    """A chat answer as output items: reasoning, then the message, then the calls.

    The message is left out only when the model called tools and wrote nothing else, so a
    plain answer always has one (``response.output_text`` works even for an empty reply).
    """
    items = []
    if message.reasoning_content:
        items.append(reasoning_item(new_item_id("rs"), message.reasoning_content))
    if message.content or not message.tool_calls:
        items.append(message_item(new_item_id("msg"), message.content or "", status))
    for call in message.tool_calls or []:
        items.append(
            function_call_item(
                new_item_id("fc"), call.id, call.function.name, call.function.arguments
            )
        )
    return items


class ResponseTurn(ChatTurn):
    """One Responses request: its id, its settings, and the response objects it makes."""

    def __init__(self, body: ResponsesRequest, save: Save | None) -> None:
        super().__init__(f"resp_{secrets.token_hex(24)}")
        self.body = body
        self.created_at = int(time.time())
        self._save = save if body.store else None

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body, sampling = self.body, self.prepared.sampling
        text_format = body.text.format if body.text and body.text.format else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": None,
            "metadata": body.metadata or {},
            "model": self.prepared.model.identifier,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "store": body.store,
            # The values sampling used, defaults included, as OpenAI echoes them.
            "temperature": sampling.temperature,
            "text": {
                "format": text_format.model_dump(by_alias=True, exclude_none=True)
                if text_format
                else {"type": "text"}
            },
            "tool_choice": _dumped(body.tool_choice) if body.tool_choice is not None else "auto",
            "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or []],
            "top_logprobs": body.top_logprobs or 0,
            "top_p": sampling.top_p,
            "truncation": body.truncation or "disabled",
            "usage": usage,
            "user": body.user,
        }

    async def usage(self, generation: Generation, output: list[dict[str, Any]]) -> dict[str, Any]:
        usage = generation.usage
        thought = "".join(
            part["text"]
            for item in output
            if item["type"] == "reasoning"
            for part in item["content"]
        )
        return {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.prompt_tokens_details.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {
                "reasoning_tokens": await self.reasoning_tokens(thought, usage.completion_tokens)
            },
            "total_tokens": usage.total_tokens,
        }

    async def complete(
        self, status: str, output: list[dict[str, Any]], generation: Generation
    ) -> dict[str, Any]:
        """The final response; stored for ``previous_response_id`` unless ``store`` is false."""
        response = self.response(status, output, await self.usage(generation, output))
        if self._save is not None:
            self._save(self.id, response, output)
        return response

    async def prepare(self, chat_body: ChatCompletionRequest, model: LoadedModel) -> Prepared:
        """The chat request, made to fit by dropping the oldest turns when truncation is auto."""
        while True:
            try:
                return await super().prepare(chat_body, model)
            except ContextLengthExceededError:
                shorter = (
                    None
                    if self.body.truncation != "auto"
                    else without_oldest_turn(chat_body.messages)
                )
                if shorter is None:
                    raise
                chat_body = chat_body.model_copy(update={"messages": shorter})

    async def respond(self, generation: Generation) -> dict[str, Any]:
        completion = await chat_completion(generation)
        choice = completion.choices[0]
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        output = output_items(choice.message, status)
        if choice.logprobs is not None:
            _attach_logprobs(output, choice.logprobs["content"])
        return await self.complete(status, output, generation)

    def events(self, generation: Generation) -> AsyncIterator[dict[str, Any]]:
        return ResponseEvents(self, generation).run()


def without_oldest_turn(messages: list[ChatMessage]) -> list[ChatMessage] | None:
    """``messages`` less the oldest turn (a user message and what answered it), system
    messages kept; ``None`` when only the latest turn is left."""
    system = [message for message in messages if message.role in ("system", "developer")]
    rest = [message for message in messages if message.role not in ("system", "developer")]
    later_users = [index for index, message in enumerate(rest) if message.role == "user" and index]
    if not later_users:
        return None
    return [*system, *rest[later_users[0] :]]


def _attach_logprobs(output: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Give the answer's text its tokens' log-probabilities.

    Only when the answer is all the model wrote: with reasoning or tool calls beside it, the
    tokens would have to be split between items, which is left undone.
    """
    if len(output) == 1 and output[0]["type"] == "message":
        output[0]["content"][0]["logprobs"] = entries


def _dumped(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


class ResponseEvents:
    """The Responses streaming events of one turn, made from the chat stream's chunks.

    Chat chunks carry reasoning, content and tool-call deltas in the order the model wrote
    them (calls whole, at the end); each kind opens an output item, and the next kind (or the
    end) closes it, so items stream one after another as OpenAI's do.
    """

    def __init__(self, turn: ResponseTurn, generation: Generation) -> None:
        self.turn = turn
        self.generation = generation
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
        try:
            async for chunk in chat_chunks(self.generation, include_usage=False):
                for event in self.feed(chunk):
                    yield event
        except APIError as exc:
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
        response = await self.turn.complete(status, self.output, self.generation)
        yield self.lifecycle(f"response.{status}", response)

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
                function = call["function"]
                item = function_call_item(
                    new_item_id("fc"), call["id"], function["name"], "", "in_progress"
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
        if item["type"] == "function_call":
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
