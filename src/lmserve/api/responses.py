"""OpenAI's Responses API: ``POST /v1/responses``, and stored responses by id.

A Responses request is a chat completion in other clothes: its input items become chat
messages, its tools and ``text.format`` become chat's tools and ``response_format``, and the
chat machinery (template, tool calls, grammars, streaming) does the rest.  What is new is
state: a response is kept (see :mod:`lmserve.api.responses_store`) so that a later request
can continue it with ``previous_response_id``, and its input items can be listed.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from lmserve.api.errors import InvalidRequestError, validation_error
from lmserve.api.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolChoiceFunction,
    ToolDefinition,
)
from lmserve.api.responses_output import ResponseTurn
from lmserve.api.responses_protocol import (
    ContentPart,
    FunctionToolChoice,
    InputItem,
    MediaPart,
    ResponsesRequest,
)
from lmserve.api.responses_store import (
    StoredResponse,
    item_page,
    public_item,
    response_not_found,
    response_store,
)
from lmserve.api.serving import named_server_sent_events, serve_generation

router = APIRouter(prefix="/v1")
_items = TypeAdapter(list[InputItem])


# -- request → chat ---------------------------------------------------------------------------


def _text(content: str | list[ContentPart], param: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if isinstance(part, MediaPart):
            raise InvalidRequestError(
                "This model reads text only; image, file and audio inputs are not supported.",
                param=f"{param}[{index}]",
                code="unsupported_content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def chat_messages(
    items: list[InputItem], instructions: str | None, first_new: int = 0
) -> list[ChatMessage]:
    """Input items as chat messages; items before ``first_new`` come from stored history.

    Consecutive function calls (and the assistant text before them) are one assistant turn,
    as chat templates expect; reasoning items are left out.
    """
    messages = [ChatMessage(role="system", content=instructions)] if instructions else []
    for index, item in enumerate(items):
        param = f"input[{index - first_new}]"
        if item.type == "message":
            assert item.role is not None and item.content is not None  # the model checks them
            content = _text(item.content, f"{param}.content")
            messages.append(ChatMessage(role=item.role, content=content))
        elif item.type == "function_call":
            assert item.call_id is not None and item.name is not None
            call = ToolCall(
                id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif item.type == "function_call_output":
            assert item.output is not None
            content = _text(item.output, f"{param}.output")
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=content))
    return messages


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
        return NamedToolChoice(function=ToolChoiceFunction(name=choice.name))
    return choice


def chat_request(
    body: ResponsesRequest, items: list[InputItem], first_new: int
) -> ChatCompletionRequest:
    messages = chat_messages(items, body.instructions, first_new)
    if not messages:
        raise InvalidRequestError(
            "Nothing to answer: 'input' is empty.", param="input", code="empty_input"
        )
    tools = [
        ToolDefinition(
            function=FunctionDefinition.model_validate(tool.model_dump(exclude={"type"}))
        )
        for tool in body.tools or []
    ]
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=messages,
            max_tokens=body.max_output_tokens,
            logprobs=body.wants_logprobs,
            top_logprobs=(body.top_logprobs or 0) if body.wants_logprobs else None,
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=_response_format(body),
            tool_choice=_tool_choice(body),
            tools=tools or None,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            min_p=body.min_p,
            repeat_penalty=body.repeat_penalty,
            seed=body.seed,
            user=body.user,
            stream=body.stream,
            ttl=body.ttl,
        )
    except ValidationError as exc:  # e.g. a stored conversation grown past MAX_MESSAGES
        raise validation_error(exc) from exc


# -- routes -----------------------------------------------------------------------------------


@router.post("/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> Response | Any:
    store = response_store(request)
    history: list[InputItem] = []
    listed: list[dict[str, Any]] = []  # the history as input_items lists it
    if body.previous_response_id is not None:
        previous = store.continued(body.previous_response_id)
        history, listed = previous.conversation, previous.items
    items = [*history, *body.input]

    def save(response_id: str, response: dict[str, Any], output: list[dict[str, Any]]) -> None:
        # The instructions are not part of the conversation: OpenAI drops them too.
        inputs = [*listed, *(public_item(item) for item in body.input)]
        conversation = [*items, *_items.validate_python(output)]
        store.put(response_id, StoredResponse(response, conversation, inputs, output))

    turn = ResponseTurn(body, save)
    return await serve_generation(
        request,
        chat_request(body, items, len(history)),
        turn.prepare,
        turn.respond,
        turn.events,
        encode=named_server_sent_events,
    )


@router.get("/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    stored = response_store(request).get(response_id)
    if stored is None:
        raise response_not_found(response_id)
    return stored.response


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    if not response_store(request).delete(response_id):
        raise response_not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int = Query(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = Query(default=None, max_length=200),
    before: str | None = Query(default=None, max_length=200),
) -> dict[str, Any]:
    """The items that made a response: its input, after those of the turns it continues."""
    stored = response_store(request).get(response_id)
    if stored is None:
        raise response_not_found(response_id)
    return item_page(stored.input_items, limit=limit, order=order, after=after, before=before)
