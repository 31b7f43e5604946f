"""LM Studio's native chat, ``POST /api/v1/chat``: one input at a time, the history kept here.

A request names the model, sends one ``input`` (and maybe a ``system_prompt``) and gets its
``output`` items (reasoning, then the message) with LM Studio's ``stats``.  Unless ``store`` is
false, the conversation is kept and the answer carries a ``response_id``; a later request
continues it with ``previous_response_id``.  Streams are LM Studio's named events:
``chat.start``, ``prompt_processing.*``, ``reasoning.*``, ``message.*``, then ``chat.end``
holding the whole result.

MCP ``integrations`` (tools run by the server) are refused with a 400: lmserve runs no tools.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from lmserve.api.chat import ChatTurn, chat_chunks, chat_completion
from lmserve.api.errors import APIError, InvalidRequestError, validation_error
from lmserve.api.generation import Generation
from lmserve.api.protocol import MAX_TOKENS_CAP, ChatCompletionRequest, ChatMessage
from lmserve.api.responses_store import LRUStore
from lmserve.api.serving import named_server_sent_events, serve_generation

router = APIRouter(prefix="/api/v1")


class NativeChatRequest(BaseModel):
    """The request fields in the order of LM Studio's reference."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: str = Field(min_length=1)
    system_prompt: str | None = None
    integrations: list[Any] | None = Field(default=None, max_length=64)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    # The model decides how it reasons; accepted for clients that send it.
    reasoning: Literal["off", "low", "medium", "high", "on"] | None = None
    # Accepted; the context is the loaded model's (set it with `lmserve load --context-length`).
    context_length: int | None = Field(default=None, ge=64, le=1 << 20)
    store: bool = True
    previous_response_id: str | None = Field(default=None, max_length=200)
    # lmserve's extensions, as on the other routes.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    ttl: float | None = Field(default=None, gt=0, le=365 * 24 * 3600)


def chat_threads(request: Request) -> LRUStore[list[ChatMessage]]:
    return request.app.state.chat_threads  # type: ignore[no-any-return]


def chat_request(body: NativeChatRequest, history: list[ChatMessage]) -> ChatCompletionRequest:
    if body.integrations:
        raise InvalidRequestError(
            "'integrations' (MCP servers and plugins) are not supported: lmserve runs no tools.",
            param="integrations",
            code="not_implemented",
        )
    system = [ChatMessage(role="system", content=body.system_prompt)] if body.system_prompt else []
    # A thread's own system prompt stays unless this request brings another.
    earlier = [m for m in history if not (system and m.role == "system")]
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=[*system, *earlier, ChatMessage(role="user", content=body.input)],
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            min_p=body.min_p,
            repeat_penalty=body.repeat_penalty,
            seed=body.seed,
            stream=body.stream,
            ttl=body.ttl,
        )
    except ValidationError as exc:  # e.g. a thread grown past the message cap
        raise validation_error(exc) from exc


class NativeChatTurn(ChatTurn):
    """One native chat request: its result, and the thread it extends."""

    def __init__(
        self, body: NativeChatRequest, chat_body: ChatCompletionRequest, threads: LRUStore
    ) -> None:
        super().__init__(f"resp_{secrets.token_hex(24)}")
        self.body = body
        self.chat_body = chat_body
        self.threads = threads

    async def result(
        self, generation: Generation, reasoning: str | None, text: str
    ) -> dict[str, Any]:
        output = [{"type": "reasoning", "content": reasoning}] if reasoning else []
        output.append({"type": "message", "content": text})
        finished = generation.finished[0]
        usage = generation.usage
        result: dict[str, Any] = {
            "model_instance_id": self.prepared.model.identifier,
            "output": output,
            "stats": {
                "input_tokens": usage.prompt_tokens,
                "total_output_tokens": usage.completion_tokens,
                "reasoning_output_tokens": await self.reasoning_tokens(
                    reasoning or "", usage.completion_tokens
                ),
                "tokens_per_second": finished.tokens_per_second if finished else None,
                "time_to_first_token_seconds": finished.time_to_first_token if finished else None,
            },
        }
        if self.body.store:
            answer = ChatMessage(role="assistant", content=text)
            self.threads.put(self.id, [*self.chat_body.messages, answer])
            result["response_id"] = self.id
        return result

    async def respond(self, generation: Generation) -> dict[str, Any]:
        completion = await chat_completion(generation)
        message = completion.choices[0].message
        return await self.result(generation, message.reasoning_content, message.content or "")

    async def events(self, generation: Generation) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "chat.start", "model_instance_id": generation.prepared.model.identifier}
        yield {"type": "prompt_processing.start"}
        open_kind: str | None = None  # "reasoning" or "message", while one is streaming
        texts = {"reasoning": "", "message": ""}
        processed = False
        try:
            async for chunk in chat_chunks(generation, include_usage=False):
                delta = chunk["choices"][0]["delta"]
                for kind, piece in (
                    ("reasoning", delta.get("reasoning_content")),
                    ("message", delta.get("content")),
                ):
                    if not piece:
                        continue
                    if not processed:
                        processed = True
                        yield {"type": "prompt_processing.end"}
                    if open_kind != kind:
                        if open_kind is not None:
                            yield {"type": f"{open_kind}.end"}
                        open_kind = kind
                        yield {"type": f"{kind}.start"}
                    texts[kind] += piece
                    yield {"type": f"{kind}.delta", "content": piece}
        except APIError as exc:
            # The headers are gone: the failure goes in-band, and chat.end still comes.
            yield {
                "type": "error",
                "error": {"type": "unknown", "message": exc.message, "code": exc.code},
            }
        if not processed:
            yield {"type": "prompt_processing.end"}
        if open_kind is not None:
            yield {"type": f"{open_kind}.end"}
        result = await self.result(generation, texts["reasoning"] or None, texts["message"])
        yield {"type": "chat.end", "result": result}


@router.post("/chat", response_model=None)
async def native_chat(body: NativeChatRequest, request: Request) -> Response | Any:
    """LM Studio's stateful chat: one input, the conversation kept by id."""
    threads = chat_threads(request)
    history = threads.continued(body.previous_response_id) if body.previous_response_id else []
    chat_body = chat_request(body, history)
    turn = NativeChatTurn(body, chat_body, threads)
    return await serve_generation(
        request,
        chat_body,
        turn.prepare,
        turn.respond,
        turn.events,
        encode=named_server_sent_events,
    )
