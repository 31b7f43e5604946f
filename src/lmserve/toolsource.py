"""What the server's tool loop needs of a source of tools: an MCP server or an LM Studio plugin.

A request names its sources (each a :class:`ToolUse`); each is opened as a
:class:`ToolSource` for the request, whose tools are listed and offered to the model, and
whose calls the server runs (:mod:`lmserve.mcp.toolset` builds one request's toolset out of
them, :mod:`lmserve.api.common.tool_loop` runs its rounds).  Any failure of a source is a
:class:`ToolSourceError`, a sentence for a user or a model to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class ToolSourceError(Exception):
    """Base of every failure of a tool source (an MCP server, a plugin)."""


@dataclass(frozen=True)
class ListedTool:
    """A tool as its source lists it."""

    name: str
    description: str | None
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """What a call returned: its content as text, and whether the tool says it failed."""

    text: str
    is_error: bool


class ToolUse(Protocol):
    """A source as one request names it: its label (which names its calls in output items and
    logs), which of its tools it may use, and how the API's items name its provider."""

    @property
    def label(self) -> str: ...

    @property
    def allowed_tools(self) -> tuple[str, ...] | None: ...

    @property
    def provider(self) -> Mapping[str, str]: ...


class ToolSource(Protocol):
    """An open source of tools: list them, call one, close it (when the request is over)."""

    async def tools(self) -> Sequence[ListedTool]: ...

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult: ...

    async def close(self) -> None: ...
