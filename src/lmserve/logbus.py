"""The live log of predictions: what each request sent the model, and what came back.

Records go only to clients that asked for them (``lmserve log stream``); nothing is kept or
written to disk, so prompts never land in a log file by accident.  A subscriber that cannot
keep up loses records rather than slowing generation down.

In-process listeners (the metrics) see every record, subscribed or not; they must be quick
and must not keep the prompt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

_SUBSCRIBER_BACKLOG = 1000

Listener = Callable[[dict[str, Any]], None]
logger = logging.getLogger("lmserve.logbus")


class LogBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._listeners: list[Listener] = []
        self._closed = False

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(record)`` synchronously for every record published."""
        self._listeners.append(listener)

    def publish(self, record_type: str, **fields: Any) -> None:
        """Send a record to every subscriber and listener; call from the event loop."""
        if not self._subscribers and not self._listeners:
            return
        record = {"type": record_type, "timestamp": time.time(), **fields}
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # a metrics bug must not fail a request
                logger.exception("log listener failed")
        for queue in self._subscribers:
            if queue.qsize() < _SUBSCRIBER_BACKLOG:
                queue.put_nowait(record)

    def close(self) -> None:
        """End every subscription (the server is shutting down); later ones end at once."""
        self._closed = True
        for queue in self._subscribers:
            queue.put_nowait(None)

    def subscribe(self) -> Subscription:
        """Start keeping records for a new subscriber, from this call on.

        Registering happens here, not at the first iteration, so a caller can say "subscribed"
        to its client and be sure no record published after that is missed.  Use it as a
        context manager so the subscription ends even if it is never iterated.
        """
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        if self._closed:
            queue.put_nowait(None)
        else:
            self._subscribers.add(queue)
        return Subscription(self, queue)

    def _unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)


class Subscription:
    """The records published since :meth:`LogBus.subscribe`, until the bus closes."""

    def __init__(self, bus: LogBus, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._bus = bus
        self._queue = queue

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._bus._unsubscribe(self._queue)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        record = await self._queue.get()
        if record is None:
            self.close()
            raise StopAsyncIteration
        return record
