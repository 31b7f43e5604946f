"""Input limits beyond the schema's bounds: the request body cap (413), the number of choices.

The body cap is pure ASGI middleware.  A body that declares its length is judged by the
declaration before a byte of it is read (the HTTP parser guarantees the body is no longer
than declared).  A chunked body, whose length is known only at its end, is read here up to
the cap and handed on from memory.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmserve.api.common.errors import InvalidRequestError, PayloadTooLargeError
from lmserve.api.common.security import header, refuse

# Choices one request may ask for (prompts × n): more could never fit the default queue
# (4 slots + 64 waiting) and would only come back as 503s.
MAX_CHOICES = 64


def check_choices(count: int) -> None:
    if count > MAX_CHOICES:
        raise InvalidRequestError(
            f"This request asks for {count} completions (prompts × n); at most {MAX_CHOICES} "
            "are allowed.",
            param="n",
            code="too_many_choices",
        )


def too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is larger than this server accepts ({limit:,} bytes; "
        "see --max-body-size)."
    )


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                error = InvalidRequestError("Invalid Content-Length header.", code="invalid_header")
                await refuse(error, scope, receive, send)
            elif length > self.max_bytes:
                await refuse(too_large(self.max_bytes), scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if "chunked" not in (header(scope, b"transfer-encoding") or "").lower():
            await self.app(scope, receive, send)  # no body at all
            return
        await self._chunked(scope, receive, send)

    async def _chunked(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away mid-body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await refuse(too_large(self.max_bytes), scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as before

        await self.app(scope, replay, send)
