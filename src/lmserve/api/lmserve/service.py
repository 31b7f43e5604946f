"""lmserve's own reports: health, and each loaded model's slots."""

from __future__ import annotations

import asyncio
from typing import Any

from lmserve.models.manager import ModelManager


def health(models: ModelManager, draining: bool) -> tuple[dict[str, Any], bool]:
    """The health report, and whether the server is ready (no load under way, no drain)."""
    loading = models.loading
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
    return body, not (loading or draining)


async def slots(models: ModelManager) -> list[dict[str, Any]]:
    """Each loaded model's slots: busy or idle, tokens cached, queue depth."""
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
    return report
