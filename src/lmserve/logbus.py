"""The live log of predictions: what each request sent the model, and what came back.

Records go only to clients that asked for them (``lmserve log stream``); nothing is kept or
written to disk, so prompts never land in a log file by accident.  A subscriber that cannot
keep up loses records rather than slowing generation down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

_SUBSCRIBER_BACKLOG = 1000


class LogBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def publish(self, record_type: str, **fields: Any) -> None:
        """Send a record to every subscriber; call from the event loop."""
        if not self._subscribers:
            return
        record = {"type": record_type, "timestamp": time.time(), **fields}
        for queue in self._subscribers:
            if queue.qsize() < _SUBSCRIBER_BACKLOG:
                queue.put_nowait(record)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)
