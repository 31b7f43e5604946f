"""What answers at the server's root: a small JSON for the clients that probe it.

Two surfaces answer ``GET|HEAD /``: ``lmserve/`` always, and ``webui/`` (included before it)
when the chat page is on, which gives browsers the page and everyone else this.
"""

from __future__ import annotations

from typing import Any

import lmserve


def root_answer() -> dict[str, Any]:
    """The server's name, version and where its APIs live (Claude Code sends ``HEAD /``
    before its first request)."""
    return {
        "name": "lmserve",
        "version": lmserve.__version__,
        "apis": {"openai": "/v1", "anthropic": "/v1/messages", "lmstudio": "/api/v1"},
    }
