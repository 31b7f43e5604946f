"""lmserve's own routes: health, slot stats and the live prediction log."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lmserve.api.streaming import EventStreamResponse
from lmserve.logbus import LogBus
from lmserve.models.manager import ModelManager

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 when ready; 503 while a model is loading or the server is shutting down."""
    models: ModelManager = request.app.state.models
    loading = models.loading
    draining = request.app.state.lifecycle.draining
    body = {
        "status": "shutting_down" if draining else "loading" if loading else "ok",
        "models": [model.identifier for model in models.loaded()],
        "loading": loading,
    }
    return JSONResponse(body, status_code=503 if loading or draining else 200)


@router.get("/lmserve/slots")
async def slots(request: Request) -> dict[str, Any]:
    """Each loaded model's slots: busy or idle, tokens cached, queue depth."""
    models: ModelManager = request.app.state.models
    return {
        "models": [
            {
                "identifier": model.identifier,
                "n_ctx": model.n_ctx,
                "queue_depth": model.engine.queue_depth,
                "engine": dataclasses.asdict(model.engine.stats),
                "slots": model.engine.slots(),
            }
            for model in models.loaded()
        ]
    }


@router.get("/lmserve/log/stream")
async def log_stream(request: Request) -> EventStreamResponse:
    """Server-sent events, one per prediction record (prompt in, output and stats out)."""
    logs: LogBus = request.app.state.logs

    async def events() -> AsyncIterator[bytes]:
        # A comment line first, so the client knows it is subscribed before any request runs.
        yield b": subscribed\n\n"
        async for record in logs.subscribe():
            yield f"data: {json.dumps(record, ensure_ascii=False)}\n\n".encode()

    return EventStreamResponse(events())
