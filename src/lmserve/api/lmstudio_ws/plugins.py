"""The ``plugins`` namespace: plugins register and offer their hooks; clients use them.

Three kinds of client speak it:

- a plugin's controlling client (``python -m lmstudio.plugin --dev``, ``lms dev``) registers
  a development plugin on ``registerDevelopmentPlugin`` and gets the credentials the plugin's
  process connects with; the plugin stays registered while that channel is open;
- the plugin's own process (connected with those credentials) opens one channel per hook
  (``setToolsProvider``, ``setPromptPreprocessor``, ``setGenerator``), says
  ``pluginInitCompleted``, and may ask about the prediction a hook serves
  (``processingPullHistory``, ``processingGetOrLoadTokenSource``, ...);
- any client uses a plugin's tools (``startToolUseSession``: the JavaScript SDK's
  ``client.plugins.pluginTools``) or its generator (``generateWithGenerator``:
  ``client.plugins.createGeneratorHandle``).

The hooks themselves are :mod:`lmserve.plugins`'; this module turns frames into their calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from lmserve.api.lmstudio_ws.errors import SDKError
from lmserve.api.lmstudio_ws.protocol import (
    GenerateWithGeneratorParameter,
    HandleUpdateParameter,
    PluginParameter,
    ProcessingParameter,
    PullHistoryParameter,
    RegisterPluginParameter,
    SchematicsParameter,
)
from lmserve.api.lmstudio_ws.session import VOID, Channel, ChannelEndpoint, Context, Namespace, Rpc
from lmserve.plugins import Plugin, PluginError, ToolsSession
from lmserve.plugins.plugin import HOOK_ENDPOINTS, error_text

logger = logging.getLogger("lmserve.plugins")


def _plugin(ctx: Context) -> Plugin:
    """The plugin this connection is; only a plugin's own process may offer hooks."""
    if ctx.plugin is None:
        raise SDKError(
            "Only a plugin may call this: connect with the credentials its registration gave "
            "(LMS_PLUGIN_CLIENT_IDENTIFIER, LMS_PLUGIN_CLIENT_PASSKEY)."
        )
    return ctx.plugin


async def _inbox(channel: Channel) -> Any:
    assert channel.inbox is not None, "the endpoint is declared with receives=True"
    return await channel.inbox.get()


# -- the controlling client -----------------------------------------------------------------------


async def register_development_plugin(
    ctx: Context, param: RegisterPluginParameter, channel: Channel
) -> None:
    """Register the plugin until the client sends ``end`` or goes away."""
    plugin = ctx.plugins.register(param.manifest)
    logger.info("plugin '%s' registered (development)", plugin.id)
    reason = f"plugin '{plugin.id}' was stopped"
    try:
        await channel.send(
            {
                "type": "ready",
                "clientIdentifier": plugin.client_identifier,
                "clientPasskey": plugin.passkey,
            }
        )
        while True:
            message = await _inbox(channel)
            if isinstance(message, dict) and message.get("type") == "end":
                break
    except asyncio.CancelledError:
        reason = f"plugin '{plugin.id}' disconnected (its controlling client went away)"
        raise
    finally:
        ctx.plugins.unregister(plugin, reason)
        logger.info("plugin '%s' unregistered: %s", plugin.id, reason)


async def reindex_plugins(ctx: Context, _: Any) -> Any:
    return VOID  # lmserve installs no plugins: there is no index to rebuild


# -- the plugin's own process ---------------------------------------------------------------------


def _hook_channel(hook: str) -> ChannelEndpoint:
    async def serve_hook(ctx: Context, _: Any, channel: Channel) -> None:
        """The plugin's ``hook``: requests out, answers in, until the plugin goes."""
        plugin = _plugin(ctx)
        link = plugin.attach(hook, channel.send)
        logger.info("plugin '%s' offers its %s", plugin.id, hook)
        reason = f"plugin '{plugin.id}' closed its {hook}"
        try:
            while True:
                link.received(await _inbox(channel))
        except asyncio.CancelledError:
            reason = f"plugin '{plugin.id}' disconnected (it crashed or was stopped)"
            raise
        finally:
            plugin.detach(link, reason)

    return ChannelEndpoint(None, serve_hook, long_lived=True, receives=True)


async def plugin_init_completed(ctx: Context, _: Any) -> Any:
    plugin = _plugin(ctx)
    plugin.initialized.set()
    hooks = ", ".join(sorted(plugin.links)) or "no hooks"
    logger.info("plugin '%s' started (%s)", plugin.id, hooks)
    return VOID


async def set_config_schematics(ctx: Context, param: SchematicsParameter) -> Any:
    _plugin(ctx).config_schematics = param.schematics
    return VOID


async def set_global_config_schematics(ctx: Context, param: SchematicsParameter) -> Any:
    _plugin(ctx).global_config_schematics = param.schematics
    return VOID


async def processing_handle_update(ctx: Context, param: HandleUpdateParameter) -> Any:
    """A hook's status for the prediction it serves (LM Studio shows it in its chat): the
    server's log carries it."""
    ctx.plugins.context(param.pci, param.token)
    state = param.update.get("state")
    text = state.get("text") if isinstance(state, dict) else None
    logger.info("plugin '%s': %s", _plugin(ctx).id, text or param.update.get("type"))
    return VOID


async def processing_pull_history(ctx: Context, param: PullHistoryParameter) -> Any:
    """The history of the prediction a hook serves (with its current message, if asked)."""
    history = ctx.plugins.context(param.pci, param.token).history
    messages = list(history.get("messages", []))
    if not param.includeCurrent and messages:
        messages = messages[:-1]
    return {"messages": messages}


async def processing_get_or_load_token_source(ctx: Context, param: ProcessingParameter) -> Any:
    model = ctx.plugins.context(param.pci, param.token).model
    if model is None:
        raise SDKError("This prediction has no model.")
    return {"tokenSourceIdentifier": {"type": "model", "identifier": model}}


async def processing_flag(ctx: Context, param: ProcessingParameter) -> Any:
    """``processingHasStatus``, ``processingNeedsNaming``: no chat window here to name."""
    ctx.plugins.context(param.pci, param.token)
    return False


# -- clients using a plugin -----------------------------------------------------------------------


async def _serve_call(session: ToolsSession, channel: Channel, packet: dict[str, Any]) -> None:
    call_id = packet.get("callId")
    arguments = packet.get("arguments")
    try:
        answer = await session.request(str(packet.get("name")), arguments or {})
    except PluginError as exc:
        answer = {"type": "toolCallError", "error": {"title": str(exc)}}
    if answer.get("type") != "toolCallError":
        result = answer.get("result")
        await channel.send({"type": "toolCallComplete", "callId": call_id, "result": result})
        return
    # The plugin's error as it sent it; the SDKs show its rootTitle.
    sent = answer.get("error")
    error = dict(sent) if isinstance(sent, dict) else {}
    error.setdefault("title", error_text(sent))
    error.setdefault("rootTitle", error["title"])
    await channel.send({"type": "toolCallError", "callId": call_id, "error": error})


def _forget(calls: dict[Any, asyncio.Task[None]], key: Any, _: asyncio.Task[None]) -> None:
    calls.pop(key, None)


async def start_tool_use_session(ctx: Context, param: PluginParameter, channel: Channel) -> None:
    """A client's session of a plugin's tools: ``callTool`` packets in, results out, until
    it discards the session."""
    plugin = ctx.plugins.get(param.pluginIdentifier)
    session = await plugin.tools_session()
    if session is None:
        raise SDKError(f"Plugin '{plugin.id}' provides no tools.")
    calls: dict[Any, asyncio.Task[None]] = {}
    try:
        await channel.send({"type": "sessionReady", "toolDefinitions": session.definitions})
        while True:
            packet = await _inbox(channel)
            kind = packet.get("type") if isinstance(packet, dict) else None
            if kind == "discardSession":
                break
            if kind == "callTool":
                key = packet.get("callId")
                task = asyncio.ensure_future(_serve_call(session, channel, packet))
                calls[key] = task
                task.add_done_callback(functools.partial(_forget, calls, key))
            elif kind == "abortToolCall":
                task = calls.get(packet.get("callId"))
                if task is not None:
                    task.cancel()
            else:
                channel.session.warn(f"Unexpected message on channel {channel.id}")
    finally:
        for task in list(calls.values()):
            task.cancel()
        await session.close()


def _fragment(packet: dict[str, Any]) -> dict[str, Any] | None:
    """A generator's packet as the ``generateWithGenerator`` channel's (None: not one)."""
    kind = packet.get("type")
    if kind == "fragmentGenerated":
        opts = packet.get("opts") if isinstance(packet.get("opts"), dict) else {}
        fragment = {
            "content": str(packet.get("content", "")),
            "tokensCount": opts.get("tokenCount", 1),
            "containsDrafted": bool(opts.get("containsDrafted", False)),
            "reasoningType": opts.get("reasoningType", "none"),
            "isStructural": bool(opts.get("isStructural", False)),
        }
        return {"type": "fragment", "fragment": fragment}
    if kind == "toolCallGenerationStarted":
        started = {"type": "toolCallGenerationStart"}
        if packet.get("toolCallId") is not None:
            started["toolCallId"] = packet["toolCallId"]
        return started
    if kind == "toolCallGenerationNameReceived":
        return {"type": "toolCallGenerationNameReceived", "name": packet.get("toolName")}
    if kind == "toolCallGenerationArgumentFragmentGenerated":
        return {"type": kind, "content": packet.get("content", "")}
    if kind == "toolCallGenerationEnded":
        return {"type": "toolCallGenerationEnd", "toolCallRequest": packet.get("toolCallRequest")}
    if kind == "toolCallGenerationFailed":
        return {"type": "toolCallGenerationFailed"}
    return None


async def generate_with_generator(
    ctx: Context, param: GenerateWithGeneratorParameter, channel: Channel
) -> None:
    """A prediction by a plugin's generator: its fragments, then ``success``; a ``cancel``
    aborts it (and it still ends in ``success``, as a model's prediction does)."""
    plugin = ctx.plugins.get(param.pluginIdentifier)
    history = param.history.model_dump(exclude_none=True)
    tools = [tool.model_dump(exclude_none=True) for tool in param.tools]

    async def relay() -> None:
        async with contextlib.aclosing(plugin.generate(history, tools)) as packets:
            async for packet in packets:
                fragment = _fragment(packet)
                if fragment is not None:
                    await channel.send(fragment)

    relaying = asyncio.ensure_future(relay())
    cancelled = asyncio.ensure_future(channel.cancelled.wait())
    try:
        await asyncio.wait({relaying, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
        if not relaying.done():
            relaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relaying
    if not relaying.cancelled():
        relaying.result()  # the generator's failure, for the channel's error
    await channel.send({"type": "success"})


def plugins_namespace() -> Namespace:
    channels = {
        "registerDevelopmentPlugin": ChannelEndpoint(
            RegisterPluginParameter, register_development_plugin, long_lived=True, receives=True
        ),
        **{endpoint: _hook_channel(hook) for endpoint, hook in HOOK_ENDPOINTS.items()},
        "startToolUseSession": ChannelEndpoint(
            PluginParameter, start_tool_use_session, long_lived=True, receives=True
        ),
        "generateWithGenerator": ChannelEndpoint(
            GenerateWithGeneratorParameter, generate_with_generator
        ),
    }
    rpcs = {
        "reindexPlugins": Rpc(None, reindex_plugins),
        "pluginInitCompleted": Rpc(None, plugin_init_completed),
        "setConfigSchematics": Rpc(SchematicsParameter, set_config_schematics),
        "setGlobalConfigSchematics": Rpc(SchematicsParameter, set_global_config_schematics),
        "processingHandleUpdate": Rpc(HandleUpdateParameter, processing_handle_update),
        "processingPullHistory": Rpc(PullHistoryParameter, processing_pull_history),
        "processingGetOrLoadTokenSource": Rpc(
            ProcessingParameter, processing_get_or_load_token_source
        ),
        "processingHasStatus": Rpc(ProcessingParameter, processing_flag),
        "processingNeedsNaming": Rpc(ProcessingParameter, processing_flag),
    }
    return Namespace(rpcs, channels)
