"""Where a replicated model runs, for the listings that show it (``/v1/models``, LM Studio's
models APIs, ``lmserve ps``, ``/metrics``): one line per Ray Serve replica alive now."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lmserve.models.manager import ModelManager

logger = logging.getLogger("lmserve.replicas")

ASK_TIMEOUT = 5.0  # seconds: a listing answers without a replica that does not report by then

ReplicaLines = dict[str, list[dict[str, Any]]]


async def replica_lines(models: ModelManager) -> ReplicaLines:
    """Each replicated model's replicas (by its identifier); models on this machine have none."""
    replicated = [model for model in models.loaded() if model.engine.replicated]
    if not replicated:
        return {}
    answers = await asyncio.gather(
        *(asyncio.wait_for(model.engine.snapshot(), ASK_TIMEOUT) for model in replicated),
        return_exceptions=True,
    )
    lines: ReplicaLines = {}
    for model, answer in zip(replicated, answers, strict=True):
        if isinstance(answer, BaseException):
            logger.warning("%s: its replicas did not report: %s", model.identifier, answer)
            continue
        lines[model.identifier] = answer.get("replicas") or []
    return lines


def public_line(line: dict[str, Any]) -> dict[str, Any]:
    """A replica as a listing shows it (its prompt cache figures are /lmserve/slots' matter)."""
    return {key: value for key, value in line.items() if key != "prompt_cache"}
