"""lmserve's own routes: health, slot stats and the live prediction log."""

from __future__ import annotations

import asyncio
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
    """200 when ready; 503 while a model is loading or the server is shutting down.

    A model loaded again after its engine crashed is ``restarting``, not loading: the server
    itself is healthy meanwhile.
    """
    models: ModelManager = request.app.state.models
    loading = models.loading
    draining = request.app.state.lifecycle.draining
    body = {
        "status": "shutting_down" if draining else "loading" if loading else "ok",
        "models": [model.identifier for model in models.loaded()],
        "loading": loading,
        "restarting": models.restarting,
        "engines": {
            model.identifier: {
                "pid": model.engine.pid,
                **(model.repack.describe() if model.repack else {}),
            }
            for model in models.loaded()
        },
        # Without the request ids: /health answers without a key.
        "crashed": [
            {key: value for key, value in record.items() if key != "last_requests"}
            for record in models.crashes.report()
        ],
    }
    return JSONResponse(body, status_code=503 if loading or draining else 200)


@router.get("/lmserve/slots")
async def slots(request: Request) -> dict[str, Any]:
    """Each loaded model's slots: busy or idle, tokens cached, queue depth."""
    models: ModelManager = request.app.state.models
    loaded = models.loaded()
    snapshots = await asyncio.gather(
        *(model.engine.snapshot() for model in loaded), return_exceptions=True
    )
    report = []
    for model, snapshot in zip(loaded, snapshots, strict=True):
        if isinstance(snapshot, BaseException):
            continue  # its engine crashed just now: it is no longer loaded
        report.append(
            {
                "identifier": model.identifier,
                "n_ctx": model.n_ctx,
                "queue_depth": model.engine.queue_depth,
                "engine_pid": model.engine.pid,
                "engine": snapshot["stats"],
                "slots": snapshot["slots"],
            }
        )
    return {"models": report}


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
