"""The server's MCP servers: those of mcp.json, kept open, and those a request names.

A server from mcp.json is started (a stdio one as a child process) the first time a request
uses it, kept for the next requests, started again if it went away, and stopped when lmserve
stops (:meth:`McpServers.close`).  A server a request names by URL is connected for that
request only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from lmserve.mcp.config import ServerSpec, read_config
from lmserve.mcp.connection import Connection, Timeouts
from lmserve.mcp.toolset import ServerUse


class McpServers:
    """Every MCP connection of one lmserve server, and the mcp.json it reads."""

    def __init__(self, config_path: Path, timeouts: Timeouts | None = None) -> None:
        self.config_path = config_path
        self.timeouts = timeouts or Timeouts()
        self._kept: dict[str, Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    def configured(self) -> dict[str, ServerSpec]:
        """mcp.json's servers by name, read afresh (an edit needs no restart);
        ``McpConfigError`` if the file is not valid."""
        return read_config(self.config_path)

    async def connect(self, use: ServerUse) -> tuple[Connection, bool]:
        """``use``'s connection, and whether the caller owns it (a per-request one, closed
        when the request is over) or it is kept (mcp.json's)."""
        if not use.configured:
            connection = Connection(use.spec, self.timeouts)
            await connection.open()
            return connection, True
        label = use.label
        async with self._locks.setdefault(label, asyncio.Lock()):
            kept = self._kept.get(label)
            if kept is not None and kept.alive and kept.spec == use.spec:
                return kept, False
            if kept is not None:  # gone, or mcp.json changed: start it afresh
                await kept.close()
                del self._kept[label]
            if self._closed:
                raise RuntimeError("the server is stopping")
            connection = Connection(use.spec, self.timeouts)
            await connection.open()
            self._kept[label] = connection
            return connection, False

    def running(self) -> list[str]:
        """Labels of the mcp.json servers kept open now."""
        return [label for label, connection in self._kept.items() if connection.alive]

    async def close(self) -> None:
        """Stop every kept server (lmserve is stopping)."""
        self._closed = True
        kept, self._kept = list(self._kept.values()), {}
        await asyncio.gather(*(connection.close() for connection in kept))
