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
    ToolCall,
    ToolChoice,
    ToolDefinition,
)
from lmserve.api.common.tool_loop import (
    ToolRounds,
    collect_last,
    configured_use,
    new_call_id,
    run_calls,
    url_use,
)
from lmserve.api.responses.events import ResponseEvents
from lmserve.api.responses.items import chat_messages, output_items, public_item
from lmserve.api.responses.protocol import (
    FunctionToolChoice,
    InputItem,
    McpToolChoice,
    McpToolParam,
    ResponsesRequest,
)
from lmserve.api.responses.tools import ToolNames, call_name
from lmserve.config import McpSettings
from lmserve.logbus import LogBus
from lmserve.mcp.servers import McpServers
from lmserve.mcp.toolset import CallOutcome, ServedTool, ServerUse, Toolset
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


def _tool_choice(body: ResponsesRequest, server_tools: list[ToolDefinition]) -> ToolChoice | None:
    choice = body.tool_choice
    if isinstance(choice, FunctionToolChoice):
        return NamedToolChoice.of(call_name(choice.name, choice.namespace))
    if isinstance(choice, McpToolChoice):
        # A named tool of that server, else any of its tools: offered under their own names
        # (or label__name where names clash).
        label, wanted = choice.server_label, choice.name
        names = [tool.function.name for tool in server_tools]
        for name in names:
            if wanted is not None and name in (wanted, f"{label}__{wanted}"):
                return NamedToolChoice.of(name)
        if wanted is None and names:
            return "required"
        raise InvalidRequestError(
            f"tool_choice names the MCP tool '{wanted}' of '{label}', which is not among "
            "the tools offered.",
            param="tool_choice",
        )
    return choice


def mcp_uses(body: ResponsesRequest, settings: McpSettings, servers: McpServers) -> list[ServerUse]:
    """The request's ``mcp`` tools as servers: by ``server_url``, else mcp.json's
    ``server_label``; ``authorization`` goes as a bearer token."""
    uses = []
    for index, tool in enumerate(body.mcp_tools):
        param = f"tools[{index}]"
        provider = {"type": "ephemeral_mcp", "server_label": tool.server_label}
        if tool.server_url is None:
            uses.append(
                configured_use(
                    settings,
                    servers,
                    tool.server_label,
                    allowed_tools=tool.tool_names,
                    provider={"type": "plugin", "plugin_id": f"mcp/{tool.server_label}"},
                    param=param,
                )
            )
            continue
        headers = dict(tool.headers or {})
        if tool.authorization:
            headers["Authorization"] = f"Bearer {tool.authorization}"
        uses.append(
            url_use(
                settings,
                tool.server_label,
                tool.server_url,
                headers=headers,
                allowed_tools=tool.tool_names,
                provider=provider,
                param=param,
            )
        )
    return uses


@dataclass(frozen=True)
class ApprovedCall:
    """A call the client approved (``mcp_approval_response``), run before the first round."""

    approval_request_id: str
    call_id: str
    outcome: CallOutcome


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
        self.rounds: ToolRounds | None = None
        self.toolset: Toolset | None = None
        self.approved: list[ApprovedCall] = []
        self.denied: list[InputItem] = []

    def chat_request(
        self, server_tools: list[ToolDefinition] | None = None
    ) -> ChatCompletionRequest:
        """The conversation so far and this input, as one chat request (with the MCP
        servers' tools, and the calls the client approved with their results)."""
        body = self.body
        messages = chat_messages([*self.history, *body.input], body.instructions, len(self.history))
        messages += self._approval_messages()
        if not messages:
            raise InvalidRequestError(
                "Nothing to answer: 'input' is empty.", param="input", code="empty_input"
            )
        server_tools = server_tools or []
        return build_chat_request(
            messages=messages,
            logprobs=body.wants_logprobs,
            top_logprobs=(body.top_logprobs or 0) if body.wants_logprobs else None,
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=_response_format(body),
            tool_choice=_tool_choice(body, server_tools),
            tools=[*self.tool_names.offered, *server_tools] or None,
            user=body.user,
            **self.chat_fields(),
        )

    def approval_requests(self) -> list[tuple[InputItem, bool]]:
        """The approval requests this input answers, each with the client's answer; a 400
        for an answer to a request the conversation does not hold."""
        asked = {
            item.id: item
            for item in [*self.history, *self.body.input]
            if item.type == "mcp_approval_request"
        }
        answered = []
        for index, item in enumerate(self.body.input):
            if item.type != "mcp_approval_response":
                continue
            request = asked.get(item.approval_request_id)
            if request is None:
                raise InvalidRequestError(
                    f"No MCP approval request '{item.approval_request_id}' in this "
                    "conversation (send previous_response_id, or the request item).",
                    param=f"input[{index}].approval_request_id",
                )
            answered.append((request, bool(item.approve)))
        return answered

    async def run_approved(self, toolset: Toolset, logs: LogBus) -> None:
        """Run the calls the client approved (denied ones are told to the model)."""
        self.toolset = toolset
        calls: list[tuple[str, ServedTool, str]] = []
        for request, approve in self.approval_requests():
            assert request.id is not None and request.name is not None
            tool = next(
                (
                    tool
                    for tool in toolset.tools
                    if tool.server_label == request.server_label and tool.name == request.name
                ),
                None,
            )
            if not approve or tool is None:
                self.denied.append(request)
                continue
            calls.append((request.id, tool, request.arguments))
        outcomes = await run_calls(toolset, logs, self.id, calls)
        self.approved = [
            ApprovedCall(request_id, new_call_id(), outcome)
            for (request_id, _, _), outcome in zip(calls, outcomes, strict=True)
        ]

    def _approval_messages(self) -> list[ChatMessage]:
        calls = [
            ToolCall.of(call.call_id, call.outcome.tool.offered_name, call.outcome.arguments)
            for call in self.approved
        ] + [ToolCall.of(item.id, item.name or "", item.arguments) for item in self.denied]
        if not calls:
            return []
        results = [
            ChatMessage(role="tool", tool_call_id=call.call_id, content=call.outcome.for_model)
            for call in self.approved
        ] + [
            ChatMessage(
                role="tool", tool_call_id=item.id, content="The user did not approve this call."
            )
            for item in self.denied
        ]
        return [ChatMessage(role="assistant", tool_calls=calls), *results]

    def needs_approval(self, tool: ServedTool) -> bool:
        spec = next(t for t in self.body.mcp_tools if t.server_label == tool.server_label)
        return spec.needs_approval(tool.name)

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
            # An MCP server's headers and token are never echoed back.
            "tools": [
                tool.model_dump(exclude_none=True, exclude={"headers", "authorization"})
                if isinstance(tool, McpToolParam)
                else tool.model_dump(exclude_none=True)
                for tool in body.tools or []
            ],
            "top_logprobs": body.top_logprobs or 0,
            "top_p": sampling.top_p,
            "truncation": body.truncation or "disabled",
            "usage": usage,
            "user": body.user,
        }

    async def usage(self, generation: Generation, output: list[dict[str, Any]]) -> dict[str, Any]:
        rounds = self.rounds
        usage = rounds.usage if rounds is not None and rounds.usage else generation.usage
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
        if self.rounds is not None:
            events = ResponseEvents(self, generation, in_band_errors=False).run()
            return (await collect_last(events))["response"]  # type: ignore[no-any-return]
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
