"""MCP servers as specified: per request by URL, or by name in mcp.json.

mcp.json is the ``mcpServers`` format that LM Studio, Cursor and Claude Desktop share::

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "."],
                  "env": {"DEBUG": "1"}},
        "docs": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ..."}}
    }}

A server with ``command`` is started as a child process and spoken to over its stdin and
stdout; one with ``url`` over streamable HTTP (or the older SSE transport, for a URL ending in
``/sse`` or a server that does not take streamable HTTP).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmserve.mcp.errors import McpConfigError

# What a server's label may be: it names the server in output items and in "mcp/<label>".
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ServerSpec:
    """One MCP server: where it is (``url``) or how to start it (``command``)."""

    label: str
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # "sse" for a URL server that only speaks the older SSE transport; None: try streamable
    # HTTP first.
    transport: str | None = None

    @property
    def is_stdio(self) -> bool:
        return self.command is not None

    def describe(self) -> str:
        """Where the server is, for messages and listings (never its headers)."""
        if self.command is not None:
            return " ".join([self.command, *self.args])
        return str(self.url)


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise McpConfigError(f"{what} must be an object of strings")
    return dict(value)


def server_from_config(label: str, entry: Any) -> ServerSpec:
    """One ``mcpServers`` entry as a :class:`ServerSpec`; :class:`McpConfigError` if it is
    not one."""
    where = f"mcp.json: server '{label}'"
    if not LABEL_PATTERN.match(label):
        raise McpConfigError(f"{where}: a name may hold letters, digits, '_', '.' and '-'")
    if not isinstance(entry, dict):
        raise McpConfigError(f"{where} must be an object")
    command, url = entry.get("command"), entry.get("url") or entry.get("serverUrl")
    if (command is None) == (url is None):
        raise McpConfigError(f"{where} needs either 'command' (stdio) or 'url' (HTTP)")
    if command is not None:
        args = entry.get("args") or []
        if not isinstance(command, str) or not command:
            raise McpConfigError(f"{where}: 'command' must be a string")
        if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
            raise McpConfigError(f"{where}: 'args' must be a list of strings")
        env = _strings(entry.get("env"), f"{where}: 'env'")
        return ServerSpec(label, command=command, args=tuple(args), env=env)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise McpConfigError(f"{where}: 'url' must be an http(s) URL")
    kind = entry.get("type") or entry.get("transport")
    return ServerSpec(
        label,
        url=url,
        headers=_strings(entry.get("headers"), f"{where}: 'headers'"),
        transport="sse" if kind == "sse" else None,
    )


def read_config(path: Path) -> dict[str, ServerSpec]:
    """The servers of an mcp.json file, by name; none when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise McpConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise McpConfigError(f"{path} is not valid JSON: {exc}") from exc
    servers = document.get("mcpServers", {}) if isinstance(document, dict) else None
    if not isinstance(servers, dict):
        raise McpConfigError(f"{path}: 'mcpServers' must be an object of servers by name")
    return {label: server_from_config(label, entry) for label, entry in servers.items()}
