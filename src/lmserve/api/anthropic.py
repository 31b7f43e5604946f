"""Anthropic's Messages API: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Anthropic's clients take the server's root as base URL (``http://localhost:1234``) and send
their key as ``x-api-key`` (which the API key guard accepts).  A request is mapped onto a chat
completion: ``system`` becomes the system message, ``tool_use`` and ``tool_result`` blocks
become chat's assistant tool calls and tool messages, ``tool_choice`` ``any``/``tool`` force a
call through chat's call grammar.  Every error on these routes, whichever layer raised it
(validation, API keys, body cap, a missing model), leaves in Anthropic's shape.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmserve.api.anthropic_output import MessageTurn, error_body
from lmserve.api.anthropic_protocol import (
    CountTokensRequest,
    MediaBlock,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from lmserve.api.chat import prepare_chat
from lmserve.api.errors import InvalidRequestError, api_error_for, validation_error
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
from lmserve.api.serving import named_server_sent_events, serve_generation
from lmserve.models.manager import ModelManager

PATH = "/v1/messages"

router = APIRouter(prefix="/v1")


# -- request → chat ---------------------------------------------------------------------------


def _unsupported(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        "This model reads text only; image and document content is not supported.",
        param=param,
        code="unsupported_content",
    )


def _texts(blocks: str | list[Any] | None, param: str) -> str:
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    texts = []
    for index, block in enumerate(blocks):
        if not isinstance(block, TextBlock):
            raise _unsupported(f"{param}[{index}]")
        texts.append(block.text)
    return "\n".join(texts)


def _tool_result(block: ToolResultBlock, param: str) -> ChatMessage:
    content = _texts(block.content, f"{param}.content")
    if block.is_error:
        # Chat templates have no place for the flag; the model is told in words instead.
        content = f"Error: {content}"
    return ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=content)


def chat_messages(body: CountTokensRequest) -> list[ChatMessage]:
    system = _texts(body.system, "system")
    messages = [ChatMessage(role="system", content=system)] if system else []
    for index, message in enumerate(body.messages):
        param = f"messages[{index}].content"
        if isinstance(message.content, str):
            messages.append(ChatMessage(role=message.role, content=message.content))
            continue
        texts: list[str] = []
        calls: list[ToolCall] = []
        results: list[ChatMessage] = []
        for position, block in enumerate(message.content):
            where = f"{param}[{position}]"
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, MediaBlock):
                raise _unsupported(where)
            elif isinstance(block, ToolUseBlock):
                if message.role != "assistant":
                    raise InvalidRequestError(
                        "'tool_use' blocks belong in assistant messages.", param=where
                    )
                arguments = json.dumps(block.input, ensure_ascii=False)
                calls.append(
                    ToolCall(
                        id=block.id, function=FunctionCall(name=block.name, arguments=arguments)
                    )
                )
            elif isinstance(block, ToolResultBlock):
                if message.role != "user":
                    raise InvalidRequestError(
                        "'tool_result' blocks belong in user messages.", param=where
                    )
                results.append(_tool_result(block, where))
            # Thinking blocks of earlier answers are left out, as reasoning models expect.
        # Anthropic puts a turn's tool results before its text; chat has them as tool messages.
        messages.extend(results)
        if texts or calls or not results:
            content = "\n".join(texts) if texts or not calls else None
            messages.append(
                ChatMessage(role=message.role, content=content, tool_calls=calls or None)
            )
    return messages


def _prefilled(messages: list[ChatMessage], body: CountTokensRequest) -> bool:
    """Whether the conversation ends with an assistant's text, which the answer continues."""
    final = messages[-1] if messages else None
    if final is None or final.role != "assistant" or final.tool_calls:
        return False
    if isinstance(final.content, str) and final.content != final.content.rstrip():
        # Anthropic refuses it too: the model would continue after a space it cannot take back.
        raise InvalidRequestError(
            "final assistant content cannot end with trailing whitespace",
            param=f"messages[{len(body.messages) - 1}].content",
        )
    return True


# Anthropic's tool choices in chat's words ("tool" names one: see _tool_choice).
_CHOICES: dict[str, ToolChoice] = {"auto": "auto", "any": "required", "none": "none"}


def _tool_choice(body: CountTokensRequest) -> ToolChoice | None:
    choice = body.tool_choice
    if choice is None:
        return None
    if choice.type == "tool":
        assert choice.name is not None  # the protocol model checks it
        return NamedToolChoice(function=ToolChoiceFunction(name=choice.name))
    return _CHOICES[choice.type]


def _response_format(body: MessagesRequest) -> ResponseFormat | None:
    output_format = body.output_config.format if body.output_config else None
    if output_format is None:
        return None
    json_schema = {"name": "output", "schema": output_format.schema_}
    return ResponseFormat.model_validate({"type": "json_schema", "json_schema": json_schema})


def chat_request(body: CountTokensRequest) -> ChatCompletionRequest:
    tools = [
        ToolDefinition(
            function=FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.input_schema
            )
        )
        for tool in body.tools or []
    ]
    sampling: dict[str, Any] = {}
    if isinstance(body, MessagesRequest):
        sampling = {
            "max_tokens": body.max_tokens,
            "stop": body.stop_sequences,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": body.top_k,
            "seed": body.seed,
            "response_format": _response_format(body),
            "stream": body.stream,
            "ttl": body.ttl,
        }
    messages = chat_messages(body)
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=messages,
            continue_final_message=_prefilled(messages, body),
            tools=tools or None,
            tool_choice=_tool_choice(body),
            parallel_tool_calls=not (
                body.tool_choice and body.tool_choice.disable_parallel_tool_use
            ),
            **sampling,
        )
    except ValidationError as exc:  # chat's own bounds, named as chat names them
        raise validation_error(exc) from exc


# -- routes -----------------------------------------------------------------------------------


@router.post("/messages", response_model=None)
async def create_message(body: MessagesRequest, request: Request) -> Response | Any:
    turn = MessageTurn()
    try:
        return await serve_generation(
            request,
            chat_request(body),
            turn.prepare,
            turn.respond,
            turn.events,
            encode=named_server_sent_events,
        )
    except Exception as exc:
        # Unmapped exceptions would reach Starlette's outermost handler, past the reshaping.
        raise api_error_for(exc) from exc


@router.post("/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict[str, int]:
    models: ModelManager = request.app.state.models
    try:
        chat_body = chat_request(body)
        async with models.using(body.model) as model:
            prepared = await prepare_chat(chat_body, model)
    except Exception as exc:
        raise api_error_for(exc) from exc
    return {"input_tokens": len(prepared.prompt_tokens[0])}


# -- errors -----------------------------------------------------------------------------------


def _is_anthropic(path: str) -> bool:
    return path == PATH or path.startswith(PATH + "/")


def _reshaped(status: int, body: bytes) -> bytes:
    """An error body in OpenAI's shape, rewritten in Anthropic's; anything else unchanged."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return body
    return json.dumps(error_body(status, error["message"]), ensure_ascii=False).encode()


class AnthropicErrorShape:
    """Rewrites error responses on Anthropic's routes into Anthropic's error shape.

    Refusals come from many layers (the API key guard, the body cap, the draining guard,
    FastAPI's validation, the routes) which all speak OpenAI's shape; rewriting the finished
    error body here, outside all of them, covers every one without teaching each about
    Anthropic.  Only error responses are held back (they are small); streams pass through.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_anthropic(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        parts: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _reshaped(start["status"], b"".join(parts))
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)
