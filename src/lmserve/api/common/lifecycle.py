"""Draining: how many requests are in flight, and refusing new ones once shutdown began.

On SIGTERM (or Ctrl-C) the server stops taking work (503 ``shutting_down``, ``/health`` 503)
but lets the requests it is serving finish, up to ``--drain-timeout``; see
:mod:`lmserve.server`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from lmserve.api.common.errors import ServiceUnavailableError
from lmserve.api.common.security import refuse

# Streams that never end by themselves: they do not hold up a drain (the log bus closes them).
LONG_LIVED_PATHS = frozenset({"/lmserve/log/stream"})
# Answered while draining, so that load balancers and `server status` see the state.
DRAINING_PATHS = frozenset({"/health"})


class Lifecycle:
    """Shared by the middleware (which counts) and the server (which waits)."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    @property
    def idle(self) -> bool:
        return self.in_flight == 0


class DrainGuard:
    """Counts requests in flight; while draining, refuses new ones with 503."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.lifecycle.draining and path not in DRAINING_PATHS:
            error = ServiceUnavailableError(
                "The server is shutting down and takes no new requests.",
                code="shutting_down",
                # Close the connection: a client's next request should find another server.
                headers={"Connection": "close", "Retry-After": "5"},
            )
            await refuse(error, scope, receive, send)
            return
        if path in LONG_LIVED_PATHS:
            await self.app(scope, receive, send)
            return
        self.lifecycle.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.in_flight -= 1
