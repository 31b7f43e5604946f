"""OpenAI's Responses API, served as a chat completion of the whole conversation.

A Responses request is a chat completion in other clothes: its input items become chat
messages, its tools and ``text.format`` become chat's tools and ``response_format``, and the
chat machinery (template, tool calls, grammars, streaming) does the rest.  What is new is
state: a response is kept (see :mod:`lmserve.api.common.conversation`) so that a later request
can continue it with ``previous_response_id``, and its input items can be listed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import TypeAdapter

from lmserve.api.common.chat import build_chat_request, chat_completion
from lmserve.api.common.conversation import ConversationStore, ConversationTurn
from lmserve.api.common.errors import ContextLengthExceededError, InvalidRequestError, NotFoundError
from lmserve.api.common.generation import Generation, Prepared
from lmserve.api.common.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    NamedToolChoice,
    ResponseFormat,
    ToolChoice,
)
from lmserve.api.responses.events import ResponseEvents
from lmserve.api.responses.items import chat_messages, output_items, public_item
from lmserve.api.responses.protocol import FunctionToolChoice, InputItem, ResponsesRequest
from lmserve.api.responses.tools import ToolNames, call_name
from lmserve.models.loader import LoadedModel

_items = TypeAdapter(list[InputItem])


@dataclass
class StoredResponse:
    response: dict[str, Any]
    # Input and output items up to and including this response: the next turn's history.
    conversation: list[InputItem]
    # The same conversation as OpenAI lists it, every item with an id: the inputs that made
    # this response (earlier turns included), then its output.
    input_items: list[dict[str, Any]]
    output_items: list[dict[str, Any]]

    @property
    def items(self) -> list[dict[str, Any]]:
        return [*self.input_items, *self.output_items]


class ResponseStore(ConversationStore[StoredResponse]):
    """Stored Responses API responses."""


def response_store(request: Request) -> ResponseStore:
    return request.app.state.responses  # type: ignore[no-any-return]


def response_not_found(response_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(
        f"Response with id '{response_id}' not found.", param=param, code="response_not_found"
    )


# -- request → chat ---------------------------------------------------------------------------


def _response_format(body: ResponsesRequest) -> ResponseFormat | None:
    text_format = body.text.format if body.text else None
    if text_format is None:
        return None
    if text_format.type != "json_schema":
        return ResponseFormat(type=text_format.type)
    return ResponseFormat.model_validate(
        {
            "type": "json_schema",
            "json_schema": text_format.model_dump(by_alias=True, exclude={"type"}),
        }
    )


def _tool_choice(body: ResponsesRequest) -> ToolChoice | None:
    choice = body.tool_choice
    if isinstance(choice, FunctionToolChoice):
        return NamedToolChoice.of(call_name(choice.name, choice.namespace))
    return choice


# -- the turn ---------------------------------------------------------------------------------


class ResponseTurn(ConversationTurn[StoredResponse]):
    """One Responses request: its id, its settings, the conversation it continues (the
    stored items of ``previous_response_id``), and the response objects it makes."""

    def __init__(self, body: ResponsesRequest, store: ResponseStore | None) -> None:
        super().__init__(body, store)
        self.body = body
        self.created_at = int(time.time())
        self.history: list[InputItem] = self.previous.conversation if self.previous else []
        self.tool_names = ToolNames(body)

    def chat_request(self) -> ChatCompletionRequest:
        """The conversation so far and this input, as one chat request."""
        body = self.body
        messages = chat_messages([*self.history, *body.input], body.instructions, len(self.history))
        if not messages:
            raise InvalidRequestError(
                "Nothing to answer: 'input' is empty.", param="input", code="empty_input"
            )
        return build_chat_request(
            messages=messages,
            logprobs=body.wants_logprobs,
            top_logprobs=(body.top_logprobs or 0) if body.wants_logprobs else None,
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=_response_format(body),
            tool_choice=_tool_choice(body),
            tools=self.tool_names.offered or None,
            user=body.user,
            **self.chat_fields(),
        )

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
        if self.stores:
            self.save(self.stored(response, output))
        return response

    def stored(self, response: dict[str, Any], output: list[dict[str, Any]]) -> StoredResponse:
        """This turn as the next one continues it and ``input_items`` lists it."""
        # The instructions are not part of the conversation: OpenAI drops them too.
        listed = self.previous.items if self.previous else []
        inputs = [*listed, *(public_item(item) for item in self.body.input)]
        conversation = [*self.history, *self.body.input, *_items.validate_python(output)]
        return StoredResponse(response, conversation, inputs, output)

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
        output = output_items(choice.message, status, self.tool_names)
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
