"""The plugins registered with this server, and the processing contexts their hooks may ask
about.

A development plugin is registered by its controlling client (``python -m lmstudio.plugin
--dev``, ``lms dev``) for as long as that client keeps its registration channel open; the
registration gives the credentials the plugin's own process connects with.  A plugin is known
by ``owner/name`` from its manifest; registering the same one again replaces the first.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmserve.plugins.errors import PluginError, PluginNotFound, PluginUnavailable
from lmserve.plugins.plugin import Plugin
from lmserve.toolsource import ListedTool, ToolResult, ToolSource

# What an owner or a plugin's name may be: it names the plugin in "owner/name".
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class PluginUse:
    """A plugin as one request names it for its tools (a :class:`lmserve.toolsource.ToolUse`)."""

    plugin_id: str
    allowed_tools: tuple[str, ...] | None = None
    provider: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        # Names its calls (``<label>__<tool>`` where names clash): no '/' in a function name.
        return self.plugin_id.replace("/", "_")


@dataclass(frozen=True)
class _NoTools:
    """A plugin without a tools provider, in a request's toolset."""

    plugin_id: str

    async def tools(self) -> list[ListedTool]:
        return []

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        raise PluginUnavailable(f"plugin '{self.plugin_id}' provides no tools")

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class ProcessingContext:
    """What a hook may ask of the prediction it serves (``processingPullHistory``, ...)."""

    token: str
    history: dict[str, Any]  # the SDK chat history the prediction answers
    model: str | None  # the model that answers it


class Plugins:
    """Every plugin registered with one lmserve server (``app.state.plugins``)."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout  # seconds a plugin has for each answer
        self._by_id: dict[str, Plugin] = {}
        self._contexts: dict[str, ProcessingContext] = {}

    def register(self, manifest: Any) -> Plugin:
        """A development plugin from its manifest (``owner``, ``name``), with new credentials."""
        if not isinstance(manifest, Mapping):
            raise PluginError("A plugin's manifest must be an object.")
        owner, name = manifest.get("owner"), manifest.get("name")
        for what, value in (("owner", owner), ("name", name)):
            if not isinstance(value, str) or not NAME_PATTERN.match(value):
                raise PluginError(
                    f"A plugin's manifest needs its {what}: letters, digits, '_', '.' and '-' "
                    "(100 at most)."
                )
        assert isinstance(owner, str) and isinstance(name, str)
        identifier = f"plugin-dev-{owner}-{name}-{secrets.token_hex(4)}"
        plugin = Plugin(owner, name, identifier, secrets.token_urlsafe(24), self.timeout)
        previous = self._by_id.get(plugin.id)
        if previous is not None:
            previous.close(f"plugin '{plugin.id}' was registered again")
        self._by_id[plugin.id] = plugin
        return plugin

    def unregister(self, plugin: Plugin, reason: str) -> None:
        plugin.close(reason)
        if self._by_id.get(plugin.id) is plugin:
            del self._by_id[plugin.id]

    def authenticate(self, identifier: str, passkey: str) -> Plugin | None:
        """The plugin whose credentials these are, if any."""
        for plugin in self._by_id.values():
            if plugin.client_identifier == identifier and secrets.compare_digest(
                plugin.passkey.encode(), passkey.encode()
            ):
                return plugin
        return None

    def get(self, plugin_id: str) -> Plugin:
        plugin = self._by_id.get(plugin_id)
        if plugin is None:
            raise PluginNotFound(plugin_id, sorted(self._by_id))
        return plugin

    def listed(self) -> list[Plugin]:
        return list(self._by_id.values())

    async def tools_session(self, use: PluginUse) -> ToolSource:
        """A session of ``use``'s plugin's tools provider, for a request's toolset (one that
        offers nothing when the plugin has no tools provider: it may preprocess only)."""
        plugin = self.get(use.plugin_id)
        session = await plugin.tools_session()
        return session if session is not None else _NoTools(plugin.id)

    # -- processing contexts ----------------------------------------------------------------

    def open_context(self, history: dict[str, Any], model: str | None) -> tuple[str, str]:
        """A prediction's context for its hooks: its id and token."""
        pci, token = f"pci-{secrets.token_hex(8)}", secrets.token_urlsafe(16)
        self._contexts[pci] = ProcessingContext(token, history, model)
        return pci, token

    def close_context(self, pci: str) -> None:
        self._contexts.pop(pci, None)

    def context(self, pci: str, token: str) -> ProcessingContext:
        found = self._contexts.get(pci)
        if found is None or not secrets.compare_digest(found.token.encode(), token.encode()):
            raise PluginError(f"There is no prediction in progress with the context '{pci}'.")
        return found

    def close(self) -> None:
        """lmserve is stopping: every plugin is let go."""
        for plugin in list(self._by_id.values()):
            self.unregister(plugin, "the server is stopping")
