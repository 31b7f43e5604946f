"""What the plugin host raises: one base, under the tool sources' own (a plugin is one)."""

from __future__ import annotations

from lmserve.toolsource import ToolSourceError


class PluginError(ToolSourceError):
    """Base of every plugin failure; ``str()`` is a sentence for a user or a model to read."""


class PluginNotFound(PluginError):
    """No plugin of that id is registered (``known``: those that are)."""

    def __init__(self, plugin_id: str, known: list[str]) -> None:
        shown = ", ".join(known) or "none"
        super().__init__(f"There is no plugin '{plugin_id}' registered (there are: {shown}).")
        self.plugin_id = plugin_id
        self.known = known


class PluginUnavailable(PluginError):
    """The plugin went away (it crashed, disconnected or was stopped), or gave no answer in
    time: nothing it was asked for will come."""


class PluginFailed(PluginError):
    """The plugin answered with an error (its hook raised)."""
