"""Who may call the API: the ``Host`` check against DNS rebinding, and API keys.

Both are pure ASGI middleware that look at the request line and headers only: they either
answer at once (403, 401) or hand the request on untouched, so streamed responses are never
buffered and a refused request's body is never read.

DNS rebinding: a web page on ``evil.example`` can make its own name resolve to 127.0.0.1 and
then call a loopback server from the victim's browser, with ``Host: evil.example``.  A server
bound to loopback has no business answering any other name, so it refuses them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lmserve.api.common.errors import APIError, AuthenticationError, PermissionDeniedError
from lmserve.apikeys import APIKeys

# Routes anyone may call even when API keys are configured (CORS preflights are public too:
# browsers never send credentials with them).  LM Studio's SDKs probe the greeting, without
# a key, to find the server; it says no more than /health.
PUBLIC_PATHS = frozenset({"/health", "/lmstudio-greeting"})
# The chat page's static files (api/webui), and the page itself: ``GET /`` from a browser
# (Accept: text/html). They hold no data and must load without a key, so that the page can
# ask for one; everything the page then calls needs the key like any client's request.
PUBLIC_PAGE_PREFIX = "/webui/"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), decoded as HTTP does (Latin-1)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def refuse(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        # Closing before the handshake is accepted answers the upgrade request with a 403.
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
        return
    response = JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)
    await response(scope, receive, send)


# -- Host ------------------------------------------------------------------------------------


def is_loopback_name(name: str) -> bool:
    """``localhost``, ``*.localhost`` (RFC 6761), or a loopback IP address."""
    name = name.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name part of a ``Host`` header: ``a.b:8080`` → ``a.b``, ``[::1]:80`` → ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class HostGuard:
    """Refuse (403) requests whose ``Host`` is not a loopback name nor an allowed one.

    Installed only when the server is bound to loopback.  A request without ``Host`` (HTTP/1.0
    tools) passes: browsers, the only vehicle of a rebinding attack, always send one.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(host_name(name) for name in allowed_hosts)

    def allows(self, value: str) -> bool:
        name = host_name(value)
        return name in self.allowed or is_loopback_name(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in {"http", "websocket"}:
            value = header(scope, b"host")
            if value is not None and not self.allows(value):
                shown = value[:100]
                error = PermissionDeniedError(
                    f"This server only answers requests addressed to localhost, not to "
                    f"{shown!r}. Start it with --allow-host to accept that name.",
                    code="invalid_host",
                )
                await refuse(error, scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- API keys --------------------------------------------------------------------------------


def presented_key(scope: Scope) -> str | None:
    """``Authorization: Bearer KEY`` (OpenAI's clients), else ``x-api-key: KEY`` (Anthropic's)."""
    authorization = header(scope, b"authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = header(scope, b"x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def wants_html(scope: Scope) -> bool:
    """A browser navigating to a page: ``Accept`` names ``text/html`` (clients that probe the
    root with ``*/*`` or nothing get the JSON answer)."""
    return "text/html" in (header(scope, b"accept") or "").lower()


def is_page_request(scope: Scope) -> bool:
    """A request for the chat page or one of its static files (see ``PUBLIC_PAGE_PREFIX``)."""
    if scope["method"] not in {"GET", "HEAD"}:
        return False
    path = scope["path"]
    return path.startswith(PUBLIC_PAGE_PREFIX) or (path == "/" and wants_html(scope))


def is_public(scope: Scope, page: bool = False) -> bool:
    """Needs no key: a public path, a CORS preflight, or (``page``: the chat page is on) the
    page and its files."""
    if scope["path"] in PUBLIC_PATHS or (page and is_page_request(scope)):
        return True
    # A CORS preflight: browsers send it without credentials, by design.
    return (
        scope["method"] == "OPTIONS" and header(scope, b"access-control-request-method") is not None
    )


class APIKeyGuard:
    """With keys configured, every non-public request needs one (401 otherwise); ``page``:
    the chat page is served, and loads without a key."""

    def __init__(self, app: ASGIApp, keys: APIKeys, page: bool = False) -> None:
        self.app = app
        self.keys = keys
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_public(scope, self.page):
            presented = presented_key(scope)
            if not self.keys.accepts(presented):
                # Never echo the key back, not even masked.
                message = (
                    "Incorrect API key provided."
                    if presented
                    else "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
                )
                error = AuthenticationError(message, headers={"WWW-Authenticate": "Bearer"})
                await refuse(error, scope, receive, send)
                return
        await self.app(scope, receive, send)
