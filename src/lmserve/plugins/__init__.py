"""LM Studio plugins, hosted: a plugin registers, offers hooks, and predictions use them.

A plugin is a process of its own that speaks LM Studio's SDK protocol
(``python -m lmstudio.plugin --dev PATH`` with the Python SDK; a JavaScript plugin through
``@lmstudio/sdk``): its controlling client registers it (``registerDevelopmentPlugin``), the
plugin then connects with the credentials it got and opens one channel per hook it has, a
tools provider, a prompt preprocessor, a generator.  :class:`Plugins` (``app.state.plugins``)
keeps the registered plugins; :class:`Plugin` asks a plugin's hooks for work and waits for
their answers, with a time limit; a plugin that goes away fails what it was asked for, never
the server.  The SDK's frames are read and written by the surface that speaks them
(``api/lmstudio_ws``); this package only sees each hook's packets.
"""

from lmserve.plugins.errors import PluginError, PluginFailed, PluginNotFound, PluginUnavailable
from lmserve.plugins.plugin import Plugin, ToolsSession
from lmserve.plugins.registry import Plugins, PluginUse

__all__ = [
    "Plugin",
    "PluginError",
    "PluginFailed",
    "PluginNotFound",
    "PluginUnavailable",
    "PluginUse",
    "Plugins",
    "ToolsSession",
]
