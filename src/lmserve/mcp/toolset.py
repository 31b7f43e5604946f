"""The tools one request may use: its MCP servers' and plugins' listed tools, and the calls.

A request names its sources (an MCP server is a :class:`ServerUse`; a plugin, a
:class:`lmserve.plugins.PluginUse`); :func:`build_toolset` opens them and lists their tools
(only ``allowed_tools``, where given).  Each tool is offered to the model under its own name,
or ``<label>__<name>`` where two sources (or a client's own function) share a name.
:meth:`Toolset.call` runs a call and never raises: a tool that fails, a source that is gone,
arguments that are not a JSON object, all become an outcome with an ``error`` for the model
(and the client) to read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmserve.mcp.config import ServerSpec
from lmserve.toolsource import ToolSource, ToolSourceError, ToolUse


@dataclass(frozen=True)
class ServerUse:
    """A server as one request names it: which, which of its tools, and how the API's items
    name its provider (LM Studio's ``provider_info``)."""

    spec: ServerSpec
    allowed_tools: tuple[str, ...] | None = None
    configured: bool = False  # from mcp.json: kept open between requests
    provider: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec.label


@dataclass(frozen=True)
class ServedTool:
    """A source's tool as the model is offered it (the server runs its calls)."""

    offered_name: str  # the function name the model calls
    name: str  # the tool's own name on its source
    use: ToolUse
    description: str | None
    input_schema: dict[str, Any]

    @property
    def server_label(self) -> str:
        return self.use.label

    def listed(self) -> dict[str, Any]:
        """As an OpenAI ``mcp_list_tools`` item lists it."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "annotations": None,
        }


@dataclass
class CallOutcome:
    """A finished call: its output, or why there is none."""

    tool: ServedTool
    arguments: str  # JSON text, as the model wrote it
    output: str | None = None
    error: str | None = None
    # "invalid_arguments", "tool_error" (the tool says it failed) or "call_failed" (no
    # result: a timeout, a lost server); None on success.
    error_kind: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def for_model(self) -> str:
        """What the model reads as the call's result."""
        return self.output if self.output is not None else f"Error: {self.error}"


def parse_arguments(arguments: str) -> dict[str, Any] | None:
    """The model's arguments as an object; ``None`` when they are not one."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class Toolset:
    """Tools of the sources one request uses; its per-request sources close with it."""

    def __init__(
        self,
        tools: list[ServedTool],
        connections: dict[str, ToolSource],
        owned: Sequence[ToolSource],
    ) -> None:
        self.tools = tools
        self._by_name = {tool.offered_name: tool for tool in tools}
        self._connections = connections
        self._owned = list(owned)

    def find(self, offered_name: str) -> ServedTool | None:
        return self._by_name.get(offered_name)

    def servers(self) -> list[str]:
        return list(self._connections)

    def listed(self, label: str) -> list[dict[str, Any]]:
        return [tool.listed() for tool in self.tools if tool.server_label == label]

    async def call(self, tool: ServedTool, arguments: str) -> CallOutcome:
        started = time.monotonic()
        outcome = CallOutcome(tool, arguments)
        parsed = parse_arguments(arguments)
        if parsed is None:
            outcome.error = f"the arguments of '{tool.name}' are not a JSON object: {arguments}"
            outcome.error_kind = "invalid_arguments"
        else:
            try:
                result = await self._connections[tool.server_label].call(tool.name, parsed)
            except ToolSourceError as exc:
                outcome.error, outcome.error_kind = str(exc), "call_failed"
            else:
                if result.is_error:
                    outcome.error, outcome.error_kind = (
                        result.text or "the tool failed",
                        "tool_error",
                    )
                else:
                    outcome.output = result.text
        outcome.seconds = time.monotonic() - started
        return outcome

    async def close(self) -> None:
        await asyncio.gather(*(connection.close() for connection in self._owned))


async def build_toolset(
    uses: Sequence[ToolUse],
    connect: Callable[[ToolUse], Awaitable[tuple[ToolSource, bool]]],
    reserved_names: Iterable[str] = (),
) -> Toolset:
    """Open each source (at once), list its tools, and name them for the model.

    ``connect`` gives a use's source and whether the toolset owns it (a per-request one,
    closed with the toolset).  Any source that cannot be reached or listed raises its
    :class:`ToolSourceError` (every source opened so far is closed first).
    """
    results = await asyncio.gather(*(connect(use) for use in uses), return_exceptions=True)
    owned = [result[0] for result in results if isinstance(result, tuple) and result[1]]
    failure = next((result for result in results if isinstance(result, BaseException)), None)
    try:
        if failure is not None:
            raise failure
        connections = {
            use.label: result[0]
            for use, result in zip(uses, results, strict=True)
            if isinstance(result, tuple)
        }
        listings = await asyncio.gather(*(connections[use.label].tools() for use in uses))
    except BaseException:
        await asyncio.gather(*(connection.close() for connection in owned))
        raise
    entries = [
        (use, tool)
        for use, listing in zip(uses, listings, strict=True)
        for tool in listing
        if use.allowed_tools is None or tool.name in use.allowed_tools
    ]
    counts: dict[str, int] = {}
    for name in [tool.name for _, tool in entries] + list(reserved_names):
        counts[name] = counts.get(name, 0) + 1
    tools = [
        ServedTool(
            offered_name=tool.name if counts[tool.name] == 1 else f"{use.label}__{tool.name}",
            name=tool.name,
            use=use,
            description=tool.description,
            input_schema=dict(tool.input_schema or {"type": "object", "properties": {}}),
        )
        for use, tool in entries
    ]
    return Toolset(tools, connections, owned)
