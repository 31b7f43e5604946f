"""Where lmserve keeps its files: ``$LMSERVE_HOME`` (default ``~/.lmserve``)."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """The lmserve home folder; ``LMSERVE_HOME`` overrides ``~/.lmserve``."""
    override = os.environ.get("LMSERVE_HOME")
    return Path(override).expanduser() if override else Path.home() / ".lmserve"


def models_dir() -> Path:
    """Models live LM Studio's way: ``models/<publisher>/<repo>/<file>.gguf``."""
    return home_dir() / "models"


def downloads_dir() -> Path:
    """Partial downloads wait here, outside ``models/``, until their checksum matches."""
    return home_dir() / "downloads"


def logs_dir() -> Path:
    return home_dir() / "logs"


def server_state_file() -> Path:
    """Written by ``lmserve server start``: where the background server listens, its pid."""
    return home_dir() / "server.json"


def selfcheck_file() -> Path:
    """The hardware self-check's verdicts: may llama.cpp repack weights on this machine."""
    return home_dir() / "selfcheck.json"


def conversations_file() -> Path:
    """The web page's conversations: one SQLite database (``lmserve.api.webui.store``)."""
    return home_dir() / "conversations.sqlite3"


def prompt_cache_dir() -> Path:
    """The prompt cache's disk tier: a folder of block files per model and load settings."""
    return home_dir() / "cache" / "prompts"


def mcp_config_file() -> Path:
    """MCP servers the API may use by name (``--allow-mcp-json``), in the ``mcpServers``
    format of LM Studio and Cursor."""
    return home_dir() / "mcp.json"
