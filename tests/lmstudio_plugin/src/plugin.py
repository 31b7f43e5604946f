"""A real LM Studio plugin for the tests, on LM Studio's Python SDK (``python -m lmstudio.plugin
--dev tests/lmstudio_plugin``): a tools provider whose results a test can recognise, and a
prompt preprocessor that marks what it saw.

``PLUGIN_FIXTURE_NONCE`` is the nonce its tools and its preprocessor answer with;
``PLUGIN_FIXTURE_PIDFILE``, where given, gets the plugin process's id (so a test can kill it
in the middle of a call).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lmstudio.plugin.hooks import PromptPreprocessorController, ToolsProviderController

NONCE = os.environ.get("PLUGIN_FIXTURE_NONCE", "nonce-unset")

if os.environ.get("PLUGIN_FIXTURE_PIDFILE"):
    Path(os.environ["PLUGIN_FIXTURE_PIDFILE"]).write_text(str(os.getpid()))


def secret_word(topic: str) -> str:
    """Look up the secret word for a topic."""
    return f"The secret word for {topic} is {NONCE}."


def explode(topic: str) -> str:
    """A tool that always fails."""
    raise RuntimeError(f"exploded on purpose ({NONCE})")


def wait_forever(topic: str) -> str:
    """A tool that never answers."""
    time.sleep(3600)
    return "unreachable"


async def list_provided_tools(ctl: ToolsProviderController) -> list:
    return [secret_word, explode, wait_forever]


async def preprocess_prompt(ctl: PromptPreprocessorController, message):
    """Append the nonce to the user's text (a status block on the way, as plugins report)."""
    status = await ctl.notify_start("Marking the message")
    text = message.to_dict()["content"][0]["text"]
    await status.notify_done("Marked")
    return {"role": "user", "content": [{"type": "text", "text": f"{text} [seen by {NONCE}]"}]}
