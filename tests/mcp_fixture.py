"""A real MCP server for the tests, on the official SDK: tools whose results a test can recognise.

Run as ``python tests/mcp_fixture.py http PORT`` (streamable HTTP at ``/mcp``), ``sse PORT``
(the older SSE transport at ``/sse``) or ``stdio``.  ``MCP_FIXTURE_NONCE`` is the nonce its
tools answer with; ``MCP_FIXTURE_PIDFILE``, where given, gets the process id (so a test can
see the server stop with lmserve).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer

NONCE = os.environ.get("MCP_FIXTURE_NONCE", "nonce-unset")

server = MCPServer("lmserve-fixture")


@server.tool()
def secret_word(topic: str) -> str:
    """Look up the secret word for a topic."""
    return f"The secret word for {topic} is {NONCE}."


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return f"{a + b} ({NONCE})"


@server.tool()
def request_headers(ctx: Context) -> str:
    """The HTTP headers this call came with (authorization and x-* ones)."""
    headers = ctx.headers or {}
    kept = {
        name.lower(): value
        for name, value in headers.items()
        if name.lower() == "authorization" or name.lower().startswith("x-")
    }
    return json.dumps(kept, sort_keys=True)


@server.tool()
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"exploded: {reason}")


@server.tool()
async def wait_forever() -> str:
    """Never answers."""
    await anyio.sleep(3600)
    return "never"


def main() -> None:
    pidfile = os.environ.get("MCP_FIXTURE_PIDFILE")
    if pidfile:
        Path(pidfile).write_text(str(os.getpid()))
    transport = sys.argv[1]
    if transport == "stdio":
        server.run("stdio")
    elif transport == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    elif transport == "sse":
        server.run("sse", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown transport {transport!r}")


if __name__ == "__main__":
    main()
