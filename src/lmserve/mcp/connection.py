"""One connection to an MCP server, on the official SDK's client and transports.

The SDK's client is an async context manager whose transports run in anyio task groups, which
must be entered and left by the same task.  A :class:`Connection` therefore keeps its client
in a task of its own (the keeper) for as long as it is open; requests from any task list and
call tools through it, and :meth:`Connection.close` has the keeper leave the context (ending
a stdio server's process).  Connecting and each call have time limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import mcp_types
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from lmserve.mcp.config import ServerSpec
from lmserve.mcp.errors import McpCallFailed, McpUnavailable
from lmserve.toolsource import ToolResult

logger = logging.getLogger("lmserve.mcp")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to connect (handshake included) and for one tool call's result."""

    connect: float = 10.0
    call: float = 60.0


def result_text(result: mcp_types.CallToolResult) -> str:
    """A call's content as the text a model reads: text parts as they are, joined by lines;
    any other part (an image, a resource) as its JSON."""
    pieces = []
    for part in result.content:
        if isinstance(part, mcp_types.TextContent):
            pieces.append(part.text)
        else:
            pieces.append(json.dumps(part.model_dump(mode="json", exclude_none=True)))
    if not pieces and result.structured_content is not None:
        pieces.append(json.dumps(result.structured_content))
    return "\n".join(pieces)


def _first_error(exc: BaseException) -> BaseException:
    """The innermost cause in the SDK's nested task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _reason(exc: BaseException) -> str:
    inner = _first_error(exc)
    if isinstance(inner, httpx2.HTTPStatusError):
        return f"HTTP {inner.response.status_code}"
    text = str(inner) or type(inner).__name__
    return text


class Connection:
    """An open session with one MCP server (see the module's docstring)."""

    def __init__(self, spec: ServerSpec, timeouts: Timeouts) -> None:
        self.spec = spec
        self.timeouts = timeouts
        self._client: Client | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._failure: BaseException | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._tools: list[mcp_types.Tool] | None = None

    @property
    def alive(self) -> bool:
        return self._keeper is not None and not self._keeper.done() and self._client is not None

    async def open(self) -> None:
        """Connect and complete the handshake, within the connect timeout; else
        :class:`McpUnavailable`.  A URL server that refuses streamable HTTP is tried over SSE."""
        spec = self.spec
        if spec.is_stdio:
            await self._open("stdio")
            return
        path = urlsplit(spec.url or "").path.rstrip("/")
        if spec.transport == "sse" or path.endswith("/sse"):
            await self._open("sse")
            return
        try:
            await self._open("http")
        except McpUnavailable as first:
            if not first.answered:
                raise
            # It answered, but not as a streamable HTTP server: an older one, on SSE.
            await self._open("sse")

    async def _open(self, transport: str) -> None:
        self._ready, self._stop, self._failure = asyncio.Event(), asyncio.Event(), None
        self._keeper = asyncio.create_task(self._keep(transport), name=f"mcp {self.spec.label}")
        try:
            await asyncio.wait_for(self._ready.wait(), self.timeouts.connect)
        except TimeoutError:
            await self.close(wait=0.0)  # stuck connecting: nothing to leave gracefully
            raise McpUnavailable(
                f"MCP server '{self.spec.label}' did not answer within "
                f"{self.timeouts.connect:g} s ({self.spec.describe()})"
            ) from None
        if self._failure is not None:
            failure = self._failure
            await self.close()
            unavailable = McpUnavailable(
                f"MCP server '{self.spec.label}' cannot be reached ({self.spec.describe()}): "
                f"{_reason(failure)}"
            )
            unavailable.answered = isinstance(
                _first_error(failure), MCPError | httpx2.HTTPStatusError
            )
            raise unavailable from None

    @contextlib.asynccontextmanager
    async def _transport_client(self, transport: str) -> AsyncIterator[Client]:
        spec = self.spec
        if transport == "stdio":
            assert spec.command is not None
            params = StdioServerParameters(
                command=spec.command, args=list(spec.args), env=dict(spec.env) or None
            )
            async with Client(params, mode="legacy") as client:
                yield client
            return
        assert spec.url is not None
        if transport == "sse":
            source = sse_client(spec.url, headers=dict(spec.headers), timeout=self.timeouts.connect)
            async with Client(source, mode="legacy") as client:
                yield client
            return
        timeout = httpx2.Timeout(self.timeouts.connect, read=max(self.timeouts.call, 30.0))
        http = httpx2.AsyncClient(headers=dict(spec.headers), timeout=timeout)
        async with http, Client(streamable_http_client(spec.url, http_client=http)) as client:
            yield client

    async def _keep(self, transport: str) -> None:
        try:
            async with self._transport_client(transport) as client:
                self._client = client
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.is_set():
                self._failure = exc
            else:
                logger.warning("MCP server '%s' went away: %s", self.spec.label, _reason(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._client = None
            self._ready.set()

    async def tools(self) -> list[mcp_types.Tool]:
        """Every tool the server lists (all pages), listed once per connection."""
        if self._tools is None:
            client = self._live()
            tools: list[mcp_types.Tool] = []
            cursor: str | None = None
            try:
                async with asyncio.timeout(self.timeouts.connect):
                    while True:
                        page = await client.list_tools(cursor=cursor)
                        tools += page.tools
                        cursor = page.next_cursor
                        if not cursor:
                            break
            except (TimeoutError, MCPError, OSError, httpx2.HTTPError) as exc:
                raise McpUnavailable(
                    f"MCP server '{self.spec.label}' did not list its tools: "
                    f"{_reason(exc) if not isinstance(exc, TimeoutError) else 'timed out'}"
                ) from None
            self._tools = tools
        return self._tools

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Call a tool; :class:`McpCallFailed` when no result comes (timeout, lost server).
        A result the tool marks as an error is a result (``is_error``)."""
        client = self._live()
        limit = self.timeouts.call
        try:
            async with asyncio.timeout(limit + 1.0):
                result = await client.call_tool(name, arguments, read_timeout_seconds=limit)
        except TimeoutError:
            raise McpCallFailed(f"the tool '{name}' gave no result within {limit:g} s") from None
        except MCPError as exc:
            if "timed out" in str(exc):
                raise McpCallFailed(
                    f"the tool '{name}' gave no result within {limit:g} s"
                ) from None
            raise McpCallFailed(f"the tool '{name}' failed: {exc}") from None
        except (OSError, httpx2.HTTPError, ValueError) as exc:
            raise McpCallFailed(f"the tool '{name}' failed: {_reason(exc)}") from None
        return ToolResult(result_text(result), bool(result.is_error))

    def _live(self) -> Client:
        if not self.alive:
            raise McpUnavailable(f"MCP server '{self.spec.label}' is not connected")
        assert self._client is not None
        return self._client

    async def close(self, wait: float = 5.0) -> None:
        """Leave the session (a stdio server's process ends), cancelling it after ``wait``
        seconds; safe to call twice."""
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(keeper), wait)
        except (TimeoutError, asyncio.CancelledError):
            keeper.cancel()
            with contextlib.suppress(BaseException):
                await keeper
        except BaseException:
            pass
