"""Errors in Anthropic's shape, on Anthropic's routes, whichever layer raised them.

Every error the Messages routes return has the body ``{"type": "error", "error": {"type",
"message"}}``; the type comes from the HTTP status.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PATH = "/v1/messages"

# Anthropic's error types by HTTP status; lmserve keeps its statuses (503, not 529).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def _is_anthropic(path: str) -> bool:
    return path == PATH or path.startswith(PATH + "/")


def _reshaped(status: int, body: bytes) -> bytes:
    """An error body in OpenAI's shape, rewritten in Anthropic's; anything else unchanged."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return body
    return json.dumps(error_body(status, error["message"]), ensure_ascii=False).encode()


class AnthropicErrorShape:
    """Rewrites error responses on Anthropic's routes into Anthropic's error shape.

    Refusals come from many layers (the API key guard, the body cap, the draining guard,
    FastAPI's validation, the routes) which all speak OpenAI's shape; rewriting the finished
    error body here, outside all of them, covers every one without teaching each about
    Anthropic.  Only error responses are held back (they are small); streams pass through.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_anthropic(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        parts: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _reshaped(start["status"], b"".join(parts))
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)
