"""MCP servers, as a client: the tools of servers named by URL or configured in mcp.json.

The API layer drives this package (it offers the listed tools to a model and runs the calls
the model makes); nothing here knows HTTP requests, models or chat templates.  The protocol
itself is the official ``mcp`` SDK's.
"""

import logging

# The SDK's HTTP client logs every request at INFO: a line per MCP message.
logging.getLogger("httpx2").setLevel(logging.WARNING)
