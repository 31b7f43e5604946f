"""lmserve's own routes: the root, health, slot stats, MCP servers, the live prediction log,
metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from lmserve.api.common.metrics import CONTENT_TYPE
from lmserve.api.common.root import root_answer
from lmserve.api.common.streaming import EventStreamResponse
from lmserve.api.lmserve import service
from lmserve.logbus import LogBus
from lmserve.models.errors import ModelNotFound

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root() -> dict[str, Any]:
    """What answers at the server's root, where clients probe whether it is up (Claude Code
    sends ``HEAD /`` before its first request); with the chat page on, ``webui/`` answers
    browsers first."""
    return root_answer()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 when ready; 503 while a model is loading or the server is shutting down.

    A model loaded again after its engine crashed is ``restarting``, not loading: the server
    itself is healthy meanwhile.
    """
    state = request.app.state
    body, ready = service.health(state.models, state.lifecycle.draining)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/lmserve/slots")
async def slots(request: Request) -> dict[str, Any]:
    """Each loaded model's slots: busy or idle, tokens cached, queue depth."""
    return {"models": await service.slots(request.app.state.models)}


@router.get("/lmserve/cache")
async def prompt_cache(request: Request) -> dict[str, Any]:
    """The prompt cache beyond the slots: each loaded model's memory and disk tiers (size,
    hits, bytes), and every model's folder of states on disk."""
    return await service.cache_listing(request.app.state.models)


@router.delete("/lmserve/cache")
async def clear_prompt_cache(
    request: Request, tier: service.CacheTier = "all", model: str | None = None
) -> dict[str, Any]:
    """Empty the prompt cache: ``tier`` memory, disk or all (the default); ``model``: one
    loaded model's (else every model's, and every folder on disk)."""
    models = request.app.state.models
    if model is not None and model not in {m.identifier for m in models.loaded()}:
        raise ModelNotFound(model, [m.identifier for m in models.loaded()])
    return await service.clear_cache(models, tier, model)


@router.get("/lmserve/plugins")
async def plugins(request: Request) -> dict[str, Any]:
    """The LM Studio plugins registered now: each one's id, hooks, and whether it has
    finished starting."""
    return service.plugins_report(request.app.state.plugins)


@router.get("/lmserve/mcp")
async def mcp_servers(request: Request) -> dict[str, Any]:
    """What requests may use of MCP: whether URLs and mcp.json are allowed, and mcp.json's
    servers by name (those kept running now marked), without starting any."""
    state = request.app.state
    return service.mcp_report(state.mcp_settings, state.mcp)


@router.get("/lmserve/log/stream")
async def log_stream(request: Request) -> EventStreamResponse:
    """Server-sent events, one per prediction record (prompt in, output and stats out)."""
    logs: LogBus = request.app.state.logs

    async def events() -> AsyncIterator[bytes]:
        with logs.subscribe() as records:
            # A comment line once subscribed: a client that reads it before sending a request
            # is sure to see that request's records.
            yield b": subscribed\n\n"
            async for record in records:
                yield f"data: {json.dumps(record, ensure_ascii=False)}\n\n".encode()

    return EventStreamResponse(events())


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (needs the API key when keys are configured)."""
    state = request.app.state
    snapshots = await service.engine_snapshots(state.models)
    text = state.metrics.render(state.models, getattr(state, "lifecycle", None), snapshots)
    return Response(text, media_type=CONTENT_TYPE)
