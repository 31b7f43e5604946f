"""``lmserve mcp ls``: the MCP servers of mcp.json and their tools."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import click

from lmserve.cli.common import echo_json, table
from lmserve.paths import mcp_config_file

if TYPE_CHECKING:
    from lmserve.mcp.config import ServerSpec
    from lmserve.mcp.connection import Timeouts

# The MCP SDK is imported when a command runs, not for every `lmserve` invocation.


@click.group()
def mcp() -> None:
    """MCP servers: those of $LMSERVE_HOME/mcp.json (the mcpServers format of LM Studio
    and Cursor), which API requests name as mcp/<name> when the server runs with
    --allow-mcp-json."""


async def _describe(spec: ServerSpec, timeouts: Timeouts) -> dict[str, Any]:
    """One server, started (a stdio one as a child process) and asked for its tools."""
    from lmserve.mcp.connection import Connection
    from lmserve.mcp.errors import McpError

    entry: dict[str, Any] = {
        "name": spec.label,
        "transport": "stdio" if spec.is_stdio else "http",
        "where": spec.describe(),
    }
    connection = Connection(spec, timeouts)
    try:
        await connection.open()
        tools = await connection.tools()
        entry["tools"] = [{"name": tool.name, "description": tool.description} for tool in tools]
    except McpError as exc:
        entry["error"] = str(exc)
    finally:
        await connection.close()
    return entry


async def _describe_all(timeout: float) -> tuple[str, list[dict[str, Any]]]:
    from lmserve.mcp.connection import Timeouts
    from lmserve.mcp.servers import McpServers

    servers = McpServers(mcp_config_file())
    configured = servers.configured()
    timeouts = Timeouts(connect=timeout, call=timeout)
    described = await asyncio.gather(*(_describe(spec, timeouts) for spec in configured.values()))
    return str(servers.config_path), list(described)


@mcp.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the servers as JSON.")
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=600),
    help="Seconds to start or reach each server and list its tools.",
)
def list_servers(as_json: bool, timeout: float) -> None:
    """List the MCP servers of mcp.json and their tools (each server is started, or reached,
    and asked; a stdio server stops again afterwards)."""
    from lmserve.mcp.errors import McpConfigError

    try:
        path, described = asyncio.run(_describe_all(timeout))
    except McpConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json({"config": path, "servers": described})
        return
    if not described:
        click.echo(f"No MCP servers in {path}.")
        return
    rows = [
        [
            entry["name"],
            entry["transport"],
            ", ".join(tool["name"] for tool in entry["tools"])
            if "tools" in entry
            else f"unavailable: {entry['error']}",
        ]
        for entry in described
    ]
    click.echo(table(rows, ["NAME", "TRANSPORT", "TOOLS"]))
