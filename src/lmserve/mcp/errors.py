"""What the MCP client raises: one base, so a caller can tell MCP failures from its own."""

from __future__ import annotations

from lmserve.toolsource import ToolSourceError


class McpError(ToolSourceError):
    """Base of every MCP failure; ``str()`` is a sentence for a user or a model to read."""


class McpConfigError(McpError):
    """mcp.json cannot be read, or a server in it is not one lmserve can start."""


class McpUnavailable(McpError):
    """A server could not be reached, or did not complete the MCP handshake in time."""

    # True when the server answered, but not as MCP over the transport tried.
    answered: bool = False


class McpCallFailed(McpError):
    """A tool call got no result: it timed out, or the connection failed under it."""
