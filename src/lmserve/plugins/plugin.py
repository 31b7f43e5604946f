"""One registered plugin: its hooks' channels, and the work a prediction asks of them.

Each hook the plugin has is a channel it opened (:class:`HookLink`): the server sends it
requests (a tools session, a message to preprocess, a history to generate from), each with an
id, and the plugin's answers come back on the same channel naming that id.  A caller waits for
its answers with the plugin's time limit; when the plugin goes away (its connection closes, it
is unregistered) every caller waiting on it gets :class:`PluginUnavailable` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from lmserve.plugins.errors import PluginFailed, PluginUnavailable
from lmserve.toolsource import ListedTool, ToolResult

logger = logging.getLogger("lmserve.plugins")

Send = Callable[[dict[str, Any]], Awaitable[None]]
# What a hook's channel hands a waiting caller: the plugin's packet, or why none will come.
Delivery = dict[str, Any] | PluginUnavailable

# The hooks a plugin can offer, by the endpoint its channel is opened on.
HOOK_ENDPOINTS = {
    "setToolsProvider": "toolsProvider",
    "setPromptPreprocessor": "promptPreprocessor",
    "setGenerator": "generator",
}

EMPTY_CONFIG: dict[str, Any] = {"fields": []}


def error_text(error: Any) -> str:
    """A plugin's serialized error (LM Studio's ``title``, ``cause``) as one sentence."""
    if not isinstance(error, Mapping):
        return str(error)
    parts = [str(error[key]) for key in ("title", "cause") if error.get(key)]
    unique = [part for index, part in enumerate(parts) if part not in parts[:index]]
    return ": ".join(unique) or "no reason given"


def result_text(result: Any) -> str:
    """A tool's result as the model reads it: a string as it is, anything else as JSON."""
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False)


class HookLink:
    """One hook's channel: send it packets; its answers go to whoever waits on their id."""

    def __init__(self, plugin_id: str, hook: str, send: Send) -> None:
        self.plugin_id = plugin_id
        self.hook = hook
        self._send = send
        self._receivers: dict[str, Callable[[Delivery], None]] = {}
        self.closed: str | None = None  # why, once closed

    async def send(self, packet: dict[str, Any]) -> None:
        if self.closed is not None:
            raise PluginUnavailable(self.closed)
        try:
            await self._send(packet)
        except Exception as exc:  # the connection failed under the send
            raise PluginUnavailable(f"plugin '{self.plugin_id}' is unreachable: {exc}") from None

    def listen(self, key: str, receiver: Callable[[Delivery], None]) -> None:
        self._receivers[key] = receiver

    def forget(self, key: str) -> None:
        self._receivers.pop(key, None)

    def received(self, packet: Any) -> None:
        """A packet from the plugin, to the caller it names (one no caller waits for, a late
        answer to something abandoned, is dropped)."""
        if not isinstance(packet, dict):
            logger.warning("plugin '%s' sent a packet that is not an object", self.plugin_id)
            return
        key = packet.get("sessionId", packet.get("taskId"))
        receiver = self._receivers.get(str(key))
        if receiver is None:
            logger.debug("plugin '%s': no one waits for %s", self.plugin_id, str(packet)[:200])
            return
        receiver(packet)

    def close(self, reason: str) -> None:
        """The channel is gone: every waiting caller learns why."""
        if self.closed is not None:
            return
        self.closed = reason
        receivers, self._receivers = list(self._receivers.values()), {}
        for receiver in receivers:
            receiver(PluginUnavailable(reason))


async def _next(queue: asyncio.Queue[Delivery], timeout: float, what: str) -> dict[str, Any]:
    """The next packet for a caller, within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            delivery = await queue.get()
    except TimeoutError:
        raise PluginUnavailable(f"{what} gave no answer within {timeout:g} s") from None
    if isinstance(delivery, PluginUnavailable):
        raise delivery
    return delivery


class Plugin:
    """A registered plugin: who it is, its hooks' channels, and whether it is still there."""

    def __init__(
        self, owner: str, name: str, identifier: str, passkey: str, timeout: float
    ) -> None:
        self.owner = owner
        self.name = name
        self.id = f"{owner}/{name}"
        self.client_identifier = identifier
        self.passkey = passkey
        self.timeout = timeout
        self.links: dict[str, HookLink] = {}
        self.config_schematics: Any = None
        self.global_config_schematics: Any = None
        self.initialized = asyncio.Event()  # the plugin said ``pluginInitCompleted``
        self.gone: str | None = None
        self.lost: dict[str, str] = {}  # hooks it offered and closed, and why
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"Plugin({self.id!r})"

    def info(self) -> dict[str, Any]:
        """As LM Studio describes an enabled plugin to a hook (``RemotePluginInfo``)."""
        return {
            "identifier": self.id,
            "isDev": True,
            "isTrusted": True,
            "hasPromptPreprocessor": "promptPreprocessor" in self.links,
            "hasPredictionLoopHandler": False,
            "hasToolsProvider": "toolsProvider" in self.links,
            "hasGenerator": "generator" in self.links,
        }

    # -- the plugin's side ------------------------------------------------------------------

    def attach(self, hook: str, send: Send) -> HookLink:
        """The plugin opened ``hook``'s channel (a second one replaces the first)."""
        if self.gone is not None:
            raise PluginUnavailable(self.gone)
        previous = self.links.get(hook)
        if previous is not None:
            previous.close(f"plugin '{self.id}' opened its {hook} again")
        link = self.links[hook] = HookLink(self.id, hook, send)
        self.lost.pop(hook, None)
        return link

    def detach(self, link: HookLink, reason: str) -> None:
        link.close(reason)
        if self.links.get(link.hook) is link:
            del self.links[link.hook]
            self.lost[link.hook] = reason

    def close(self, reason: str) -> None:
        """The plugin is gone: every hook's callers learn why."""
        if self.gone is None:
            self.gone = reason
        for link in list(self.links.values()):
            self.detach(link, reason)
        self.initialized.set()  # wakes whoever waits for it to start, to learn it is gone

    # -- a prediction's side ----------------------------------------------------------------

    async def _link(self, hook: str) -> HookLink | None:
        """``hook``'s channel, once the plugin has started (None: it has no such hook)."""
        if not self.initialized.is_set():
            try:
                async with asyncio.timeout(self.timeout):
                    await self.initialized.wait()
            except TimeoutError:
                raise PluginUnavailable(
                    f"plugin '{self.id}' did not finish starting within {self.timeout:g} s"
                ) from None
        if self.gone is not None:
            raise PluginUnavailable(self.gone)
        if hook in self.lost:
            raise PluginUnavailable(self.lost[hook])
        return self.links.get(hook)

    def new_id(self) -> str:
        return f"{next(self._ids)}-{secrets.token_hex(4)}"

    async def tools_session(self, working_directory: str | None = None) -> ToolsSession | None:
        """A session of the plugin's tools provider, its tools listed; None when the plugin
        provides no tools."""
        link = await self._link("toolsProvider")
        if link is None:
            return None
        session = ToolsSession(self, link, self.new_id())
        await session.open(working_directory)
        return session

    async def preprocess(
        self,
        message: dict[str, Any],
        *,
        context: tuple[str, str],
        enabled: Sequence[Plugin] = (),
        working_directory: str | None = None,
    ) -> dict[str, Any] | None:
        """``message`` (an SDK chat message) as the plugin's prompt preprocessor rewrites
        it; None when the plugin has none.  ``context`` is the prediction's processing
        context (its id and token), through which the plugin may ask for the history."""
        link = await self._link("promptPreprocessor")
        if link is None:
            return None
        request = {
            "type": "preprocess",
            "taskId": self.new_id(),
            "input": message,
            "config": EMPTY_CONFIG,
            "pluginConfig": EMPTY_CONFIG,
            "globalPluginConfig": EMPTY_CONFIG,
            "workingDirectoryPath": working_directory,
            "enabledPluginInfos": [plugin.info() for plugin in enabled or [self]],
            "pci": context[0],
            "token": context[1],
        }
        what = f"the prompt preprocessor of plugin '{self.id}'"
        async with contextlib.aclosing(self._task(link, request, what)) as answers:
            answer = await anext(answers)  # its one answer ends it
        if answer.get("type") == "complete" and isinstance(answer.get("processed"), dict):
            return dict(answer["processed"])
        if answer.get("type") == "error":
            raise PluginFailed(
                f"the prompt preprocessor of plugin '{self.id}' failed: "
                f"{error_text(answer.get('error'))}"
            )
        raise PluginFailed(f"the prompt preprocessor of plugin '{self.id}' gave no message")

    async def generate(
        self, history: dict[str, Any], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[dict[str, Any]]:
        """The generator's packets for ``history`` (an SDK chat history): fragments and tool
        call requests, until it completes.  :class:`PluginFailed` when it has no generator or
        reports an error; leaving early aborts the generation."""
        link = await self._link("generator")
        if link is None:
            raise PluginFailed(f"plugin '{self.id}' has no generator")
        request = {
            "type": "generate",
            "taskId": self.new_id(),
            "input": history,
            "pluginConfig": EMPTY_CONFIG,
            "globalPluginConfig": EMPTY_CONFIG,
            "toolDefinitions": list(tools),
            "workingDirectoryPath": None,
        }
        what = f"the generator of plugin '{self.id}'"
        async with contextlib.aclosing(self._task(link, request, what)) as packets:
            async for packet in packets:
                kind = packet.get("type")
                if kind in ("complete", "aborted"):
                    return
                if kind == "error":
                    reason = error_text(packet.get("error"))
                    raise PluginFailed(f"the generator of plugin '{self.id}' failed: {reason}")
                yield packet

    async def _task(
        self, link: HookLink, request: dict[str, Any], what: str
    ) -> AsyncIterator[dict[str, Any]]:
        """Send a hook a task (a preprocessing, a generation); its packets, each within the
        plugin's time limit, up to the one that ends it (``complete``, ``aborted`` or
        ``error``, yielded too).  Leaving before that, for whatever reason, aborts it."""
        task_id = request["taskId"]
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        link.listen(task_id, queue.put_nowait)
        ended = False
        try:
            await link.send(request)
            while not ended:
                packet = await _next(queue, self.timeout, what)
                ended = packet.get("type") in ("complete", "aborted", "error")
                yield packet
        finally:
            link.forget(task_id)
            if not ended and link.closed is None:
                await _quietly(link.send({"type": "abort", "taskId": task_id}))


async def _quietly(sending: Awaitable[None]) -> None:
    """Best effort: an abort to a plugin that may be gone already."""
    try:
        await sending
    except Exception:
        logger.debug("a packet to a plugin was not sent", exc_info=True)


class ToolsSession:
    """One session of a plugin's tools provider: its tools, and the calls to them (a
    :class:`lmserve.toolsource.ToolSource`)."""

    def __init__(self, plugin: Plugin, link: HookLink, session_id: str) -> None:
        self.plugin = plugin
        self.link = link
        self.id = session_id
        self.definitions: list[dict[str, Any]] = []
        self._opened: asyncio.Queue[Delivery] = asyncio.Queue()
        self._calls: dict[str, asyncio.Queue[Delivery]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    def _received(self, delivery: Delivery) -> None:
        if isinstance(delivery, PluginUnavailable):
            for queue in [self._opened, *self._calls.values()]:
                queue.put_nowait(delivery)
            return
        kind = delivery.get("type")
        if kind in ("sessionInitialized", "sessionInitializationFailed"):
            self._opened.put_nowait(delivery)
        elif kind in ("toolCallStatus", "toolCallWarn"):
            text = delivery.get("statusText", delivery.get("warnText"))
            logger.info("plugin '%s', call %s: %s", self.plugin.id, delivery.get("callId"), text)
        else:
            queue = self._calls.get(str(delivery.get("callId")))
            if queue is not None:
                queue.put_nowait(delivery)

    async def open(self, working_directory: str | None) -> None:
        plugin = self.plugin
        self.link.listen(self.id, self._received)
        try:
            await self.link.send(
                {
                    "type": "initSession",
                    "pluginConfig": EMPTY_CONFIG,
                    "globalPluginConfig": EMPTY_CONFIG,
                    "workingDirectoryPath": working_directory,
                    "sessionId": self.id,
                }
            )
            answer = await _next(
                self._opened, plugin.timeout, f"the tools provider of plugin '{plugin.id}'"
            )
        except BaseException:
            await self.close()
            raise
        if answer["type"] == "sessionInitializationFailed":
            await self.close()
            raise PluginFailed(
                f"plugin '{plugin.id}' could not list its tools: {error_text(answer.get('error'))}"
            )
        definitions = answer.get("toolDefinitions")
        self.definitions = [d for d in definitions or [] if isinstance(d, dict)]

    async def tools(self) -> list[ListedTool]:
        listed = []
        for definition in self.definitions:
            function = definition.get("function") or {}
            listed.append(
                ListedTool(
                    name=str(function.get("name")),
                    description=function.get("description"),
                    input_schema=dict(function.get("parameters") or {}),
                )
            )
        return listed

    async def request(self, name: str, arguments: Any) -> dict[str, Any]:
        """One call's answer, as the plugin sent it (``toolCallComplete`` with its
        ``result``, or ``toolCallError``).  :class:`PluginUnavailable` when none comes (the
        plugin went, or gave none in time: the call is then aborted)."""
        call_id = str(next(self._ids))
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._calls[call_id] = queue
        plugin = self.plugin
        packet = {
            "type": "callTool",
            "sessionId": self.id,
            "callId": call_id,
            "toolName": name,
            "parameters": arguments,
        }
        answered = False
        try:
            await self.link.send(packet)
            what = f"the tool '{name}' of plugin '{plugin.id}'"
            answer = await _next(queue, plugin.timeout, what)
            answered = True
        finally:
            del self._calls[call_id]
            if not answered and self.link.closed is None:
                abort = {"type": "abortToolCall", "sessionId": self.id, "callId": call_id}
                await _quietly(self.link.send(abort))
        return answer

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """One call's result for the model; the tool's own error is a result marked as one."""
        answer = await self.request(name, arguments)
        if answer.get("type") == "toolCallError":
            return ToolResult(error_text(answer.get("error")), is_error=True)
        return ToolResult(result_text(answer.get("result")), is_error=False)

    async def close(self) -> None:
        """Discard the session (the plugin's provider stops waiting for its calls)."""
        if self._closed:
            return
        self._closed = True
        self.link.forget(self.id)
        if self.link.closed is None:
            await _quietly(self.link.send({"type": "discardSession", "sessionId": self.id}))
