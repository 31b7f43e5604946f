"""A Responses request's tools as the chat machinery offers them, and the names back.

Function tools pass through.  A namespace's functions are offered under qualified names
(``crm.get_customer``, or ``mcp__github__search`` for a namespace ending in a separator), and
a call of one comes back split into ``namespace`` and ``name``, as OpenAI returns it.  Hosted
tools (``web_search``...) are not offered: a local server cannot run them.
"""

from __future__ import annotations

from lmserve.api.common.protocol import FunctionDefinition, ToolDefinition
from lmserve.api.responses.protocol import (
    FunctionTool,
    NamespaceTool,
    ResponsesRequest,
    qualified_name,
)


class ToolNames:
    """The functions a request offers, by the name the model calls them."""

    def __init__(self, body: ResponsesRequest) -> None:
        self.offered: list[ToolDefinition] = []
        self._split: dict[str, tuple[str | None, str]] = {}
        for tool in body.tools or []:
            if isinstance(tool, FunctionTool):
                self._offer(None, tool)
            elif isinstance(tool, NamespaceTool):
                for function in tool.tools:
                    self._offer(tool, function)

    def _offer(self, namespace: NamespaceTool | None, tool: FunctionTool) -> None:
        name = qualified_name(namespace.name, tool.name) if namespace else tool.name
        description = tool.description
        if namespace is not None and namespace.description:
            description = f"{namespace.description}\n\n{description or ''}".strip()
        # Built without validation: the parts were validated, and a qualified name may be
        # longer than the 64 characters a single name may have.
        function = FunctionDefinition.model_construct(
            name=name, description=description, parameters=tool.parameters, strict=tool.strict
        )
        self.offered.append(ToolDefinition.model_construct(type="function", function=function))
        self._split[name] = (namespace.name if namespace else None, tool.name)

    def split(self, called: str) -> tuple[str | None, str]:
        """``(namespace, name)`` of the function the model called as ``called``."""
        return self._split.get(called, (None, called))


def call_name(name: str, namespace: str | None) -> str:
    """The name a function call item of the history had when the model made it."""
    return qualified_name(namespace, name) if namespace else name
