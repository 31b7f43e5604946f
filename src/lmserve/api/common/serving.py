"""Serving one generation over HTTP: model lookup, streaming or not, disconnects, cleanup.

Shared by every route that generates: the route hands over the request's body and a
:class:`Turn`, which says how the prompt is made and what the answer looks like.  The model is
acquired, and the request submitted, before the response starts, so a missing model, a bad
request or a full queue get their own HTTP status; the model is released and the engine told
to stop however the response ends.  :func:`start_generation` is that first half on its own,
for a surface that answers over another transport (LM Studio's WebSocket SDK protocol).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.responses import Response

from lmserve.api.common.errors import ContextLengthExceededError, InvalidRequestError
from lmserve.api.common.generation import Generation, Prepared
from lmserve.api.common.images import ImageReader
from lmserve.api.common.limits import check_choices
from lmserve.api.common.protocol import ChatCompletionRequest, GenerationRequestFields
from lmserve.api.common.streaming import (
    ClientGone,
    EventStreamResponse,
    gone_response,
    server_sent_events,
    unless_disconnected,
)
from lmserve.logbus import LogBus
from lmserve.models.loader import LoadedModel
from lmserve.models.manager import ModelManager

Body = TypeVar("Body", bound=GenerationRequestFields, contravariant=True)


class Turn(Protocol[Body]):
    """One request's part in :func:`serve_generation`: the prompt, the answer, the stream."""

    async def prepare(self, body: Body, model: LoadedModel) -> Prepared: ...

    async def respond(self, generation: Generation) -> BaseModel | dict[str, Any]: ...

    def events(self, generation: Generation) -> AsyncIterator[dict[str, Any]]: ...

    def encode(self, events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True)
class CompletionTurn:
    """A turn of OpenAI's chat or text completions: the completion object, or its chunks as
    OpenAI's ``data:`` lines."""

    prepare: Callable[[Any, LoadedModel], Awaitable[Prepared]]
    respond: Callable[[Generation], Awaitable[BaseModel]]
    events: Callable[[Generation], AsyncIterator[dict[str, Any]]]

    def encode(self, events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        return server_sent_events(events)


class Preparer(Protocol):
    """What :func:`start_generation` needs of a turn: how the prompt is made."""

    async def prepare(self, body: Any, model: LoadedModel, /) -> Prepared: ...


@dataclass
class Started:
    """A generation submitted to its model's engine, and the model it holds.

    :meth:`finish` stops the engine's work (a no-op for finished requests) and releases the
    model, once, however the answer ends.
    """

    generation: Generation
    _release: Callable[[], None]

    def finish(self) -> None:
        self.generation.cancel()
        self._release()


def refuse_reranker(model: LoadedModel, unlike: str) -> None:
    """The 400 for a reranker named where another kind of model is wanted (``unlike``: what
    a reranker does not do)."""
    if model.entry.model_type == "reranker":
        raise InvalidRequestError(
            f"Model '{model.identifier}' is a reranker: it scores documents against a query "
            f"(POST /v1/rerank) and {unlike}.",
            param="model",
            code="model_is_reranker",
        )


async def start_generation(
    models: ModelManager,
    logs: LogBus,
    body: GenerationRequestFields,
    turn: Preparer,
    make: Callable[[Prepared, LogBus], Generation] = Generation,
    *,
    images: ImageReader | None = None,
) -> Started:
    """Acquire the model ``body`` names (loading it just in time), read the images of a chat
    (``images``), prepare the prompt, check it, and submit it: a missing model, a bad request
    or a full queue raise before anything is sent back.  ``make`` builds the
    :class:`Generation` (a subclass may watch its events).
    """
    model = await models.acquire(body.model, body.ttl)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            models.release(model)

    try:
        refuse_reranker(model, "does not generate text")
        # The request's draft model, else the one the model was loaded with (--draft-model).
        draft_model = body.draft_model or model.options.draft_model
        if draft_model is not None:
            wanted = body.speculative is not False
            draft_model = await models.attach_draft(model, draft_model) if wanted else None
        if images is not None and isinstance(body, ChatCompletionRequest):
            await images.read(body, model)
        try:
            prepared = await turn.prepare(body, model)
        except ContextLengthExceededError as exc:
            # A just-in-time model takes the context its request needs.
            refitted = await models.refit(model, exc.prompt_tokens)
            if refitted is None:
                raise
            model = refitted  # the one release() releases
            prepared = await turn.prepare(body, model)
        check_choices(len(prepared.prompt_tokens) * prepared.n)
        prepared.draft_model = draft_model
        generation = make(prepared, logs)
    except BaseException:
        release()
        raise
    return Started(generation, release)


async def serve_generation(
    request: Request,
    body: GenerationRequestFields,
    turn: Turn[Any],
    *,
    after: Callable[[], Awaitable[None]] | None = None,
) -> Response | BaseModel | dict[str, Any]:
    """The answer to ``body``, whole or streamed as ``turn`` makes and encodes it; ``after``
    is awaited once the answer is over (sent, failed or abandoned)."""
    state = request.app.state
    try:
        started = await start_generation(state.models, state.logs, body, turn, images=state.images)
    except BaseException:
        if after is not None:
            await after()
        raise
    generation = started.generation
    try:
        placed = await generation.placement()  # a replicated model's: where it runs
    except BaseException:
        started.finish()
        if after is not None:
            await after()
        raise
    if body.stream:
        events = turn.encode(turn.events(generation))
        return EventStreamResponse(events, on_close=started.finish, after=after, headers=placed)
    try:
        answer = await unless_disconnected(request, turn.respond(generation))
        if placed and not isinstance(answer, Response):
            return JSONResponse(jsonable_encoder(answer), headers=placed)
        return answer
    except ClientGone:
        return gone_response()
    finally:
        started.finish()
        if after is not None:
            await after()
