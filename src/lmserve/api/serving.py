"""Serving one generation over HTTP: model lookup, streaming or not, disconnects, cleanup.

Shared by every route that generates (OpenAI's and LM Studio's): the model is acquired, and
the request submitted, before the response starts, so a missing model, a bad request or a
full queue get their own HTTP status; the model is released and the engine told to stop
however the response ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response

from lmserve.api.errors import APIError
from lmserve.api.generation import Generation, Prepared, sse_event
from lmserve.api.limits import check_choices
from lmserve.api.protocol import GenerationRequestFields
from lmserve.api.streaming import (
    ClientGone,
    EventStreamResponse,
    gone_response,
    unless_disconnected,
)
from lmserve.models.loader import LoadedModel
from lmserve.models.manager import ModelManager

Body = TypeVar("Body", bound=GenerationRequestFields)


async def serve_generation(
    request: Request,
    body: Body,
    prepare: Callable[[Body, LoadedModel], Awaitable[Prepared]],
    respond: Callable[[Generation], Awaitable[BaseModel | dict[str, Any]]],
    chunks: Callable[[Generation], AsyncIterator[dict[str, Any]]],
    encode: Callable[[AsyncIterator[dict[str, Any]]], AsyncIterator[bytes]] | None = None,
) -> Response | BaseModel | dict[str, Any]:
    """``encode`` writes the stream (default: OpenAI's ``data:`` lines and ``[DONE]``)."""
    models: ModelManager = request.app.state.models
    model = await models.acquire(body.model, body.ttl)
    released = False

    def finish(generation: Generation | None = None) -> None:
        nonlocal released
        if generation is not None:
            generation.cancel()  # a no-op for finished requests
        if not released:
            released = True
            models.release(model)

    try:
        prepared = await prepare(body, model)
        check_choices(len(prepared.prompt_tokens) * prepared.n)
        generation = Generation(prepared, request.app.state.logs)
    except BaseException:
        finish()
        raise
    if body.stream:
        events = (encode or server_sent_events)(chunks(generation))
        return EventStreamResponse(events, on_close=lambda: finish(generation))
    try:
        return await unless_disconnected(request, respond(generation))
    except ClientGone:
        return gone_response()
    finally:
        finish(generation)


async def server_sent_events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield sse_event(chunk)
    except APIError as exc:
        # Headers are gone already; report the failure in-band, as OpenAI does.
        yield sse_event(exc.body())
        return
    yield b"data: [DONE]\n\n"


async def named_server_sent_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """``event: <type>`` before each ``data:`` line, as the Responses and Anthropic APIs
    stream; their event makers report failures in-band in their own shapes."""
    async for event in events:
        yield f"event: {event['type']}\n".encode() + sse_event(event)
