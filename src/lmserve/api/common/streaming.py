"""Server-sent events (OpenAI's ``data:`` lines, or named events), and noticing that a client
went away."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from lmserve.api.common.errors import APIError

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# While a long prompt is read (a 20,000-token one takes a minute on 2 cores) nothing else is
# sent; a comment line this often keeps clients and proxies from timing the stream out.
# Every SSE parser skips comments (lines starting with ":").
KEEPALIVE_SECONDS = 10.0
KEEPALIVE = b": keep-alive\n\n"


async def with_keepalive(
    chunks: AsyncIterator[bytes], interval: float = KEEPALIVE_SECONDS
) -> AsyncIterator[bytes]:
    """``chunks``, with :data:`KEEPALIVE` sent whenever ``interval`` seconds pass without one.

    One task reads ``chunks`` into a queue for the whole stream, and one timer checks, every
    ``interval`` at most, whether the stream has been quiet.  (A task and a timed wait for
    each chunk cost the event loop about a tenth of a millisecond a token, which on a small
    machine is taken from the model's decode.)
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[bytes | None, BaseException | None]] = asyncio.Queue()
    last_put = loop.time()

    async def read() -> None:
        nonlocal last_put
        try:
            async for chunk in chunks:
                last_put = loop.time()
                queue.put_nowait((chunk, None))
        except BaseException as exc:  # raised by the consumer below, whatever it is
            queue.put_nowait((None, exc))
            if not isinstance(exc, Exception):
                raise  # a cancellation ends this task too
        else:
            queue.put_nowait((None, None))

    def check() -> None:
        nonlocal last_put, timer
        quiet = loop.time() - last_put
        if quiet >= interval:
            last_put = loop.time()
            queue.put_nowait((KEEPALIVE, None))
            quiet = 0.0
        timer = loop.call_later(interval - quiet, check)

    timer = loop.call_later(interval, check)
    reader = asyncio.ensure_future(read())
    try:
        while True:
            chunk, error = await queue.get()
            if error is not None:
                raise error
            if chunk is None:
                return
            yield chunk
    finally:
        timer.cancel()
        if not reader.done():
            reader.cancel()
            # Let the producer's own clean-up run, even while this stream is being cancelled.
            with anyio.CancelScope(shield=True):
                await asyncio.wait({reader})


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` that stops producing as soon as the client disconnects.

    Starlette only listens for the disconnect on ASGI servers older than spec 2.4; we always do,
    so a departed client cancels its generation within one token, whatever serves us.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        status_code: int = 200,
        on_close: Callable[[], None] | None = None,
        after: Callable[[], Awaitable[None]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            with_keepalive(content),
            status_code=status_code,
            headers={**SSE_HEADERS, **(headers or {})},
        )
        self._on_close = on_close
        self._after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def produce() -> None:
                    # OSError: the socket closed under us, the same as a disconnect.
                    with contextlib.suppress(OSError):
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(produce)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            # Runs even if the body iterator never started (client gone before the first
            # byte), so the engine always learns that nobody is listening.
            if self._on_close is not None:
                self._on_close()
            if self._after is not None:
                with anyio.CancelScope(shield=True):
                    await self._after()


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body must already be read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise ClientGone()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def gone_response() -> Response:
    # Nobody is there to read it; 499 is the conventional "client closed request".
    return Response(status_code=499)


def sse_event(data: dict[str, Any] | str) -> bytes:
    payload = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    return f"data: {payload}\n\n".encode()


async def server_sent_events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """OpenAI's stream: a ``data:`` line per chunk, then ``[DONE]``."""
    try:
        async for chunk in chunks:
            yield sse_event(chunk)
    except APIError as exc:
        # Headers are gone already; report the failure in-band, as OpenAI does.
        yield sse_event(exc.body())
        return
    yield b"data: [DONE]\n\n"


async def named_server_sent_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """``event: <type>`` before each ``data:`` line, as the Responses and Anthropic APIs (and
    LM Studio's chat) stream; their event makers report failures in-band in their own shapes."""
    async for event in events:
        yield f"event: {event['type']}\n".encode() + sse_event(event)
