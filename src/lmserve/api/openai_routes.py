"""OpenAI-compatible routes under ``/v1``.  HTTP only: the work is in the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmserve.api.chat import ChatService, cancel_all, sse_event
from lmserve.api.errors import APIError
from lmserve.api.protocol import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList
from lmserve.api.streaming import (
    ClientGone,
    EventStreamResponse,
    gone_response,
    unless_disconnected,
)
from lmserve.models.manager import ModelManager

router = APIRouter(prefix="/v1")


def _chat(request: Request) -> ChatService:
    return request.app.state.chat


def _models(request: Request) -> ModelManager:
    return request.app.state.models


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    """The loaded models, by the ids requests use in ``model``."""
    cards = [
        ModelCard(id=model.identifier, created=int(model.loaded_at), owned_by=model.entry.publisher)
        for model in _models(request).loaded()
    ]
    return ModelList(data=cards)


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response | Any:
    chat = _chat(request)
    prepared = chat.prepare(body)
    streams = chat.start(prepared)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStreamResponse(
            _server_sent_events(chat.stream(prepared, streams, include_usage)),
            on_close=lambda: cancel_all(streams),
        )
    try:
        return await unless_disconnected(request, chat.complete(prepared, streams))
    except ClientGone:
        return gone_response()
    finally:
        cancel_all(streams)  # a no-op for finished requests


async def _server_sent_events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield sse_event(chunk)
    except APIError as exc:
        # Headers are gone already; report the failure in-band, as OpenAI does.
        yield sse_event(exc.body())
        return
    yield b"data: [DONE]\n\n"
