"""One SDK connection: the authentication frame, then calls and channels, multiplexed.

The client sends ``rpcCall`` (answered by one ``rpcResult`` or ``rpcError``) and
``channelCreate`` (answered by ``channelSend`` packets, then ``channelClose`` or
``channelError``); on a channel it may send ``cancel``.  Each call and channel runs as a task
of its own, so a cancel reaches a prediction while it streams, and one slow call never holds up
another.  A frame that cannot be read is answered where it can be: on its call or channel when
it names one, else with a ``communicationWarning``; the connection keeps serving either way.
An endpoint LM Studio does not have gets what LM Studio gives it, one ``communicationWarning``
naming it and no answer; one it has that lmserve does not serve, an error naming it
(:mod:`lmserve.api.lmstudio_ws.endpoints`).  Every refusal is also one line in the server's
log (namespace, endpoint, why), for whoever debugs a client.
When the client goes, every task it started is cancelled (a prediction frees its slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.datastructures import State
from starlette.websockets import WebSocket

from lmserve.api.common.lifecycle import Lifecycle
from lmserve.api.lmstudio_ws.endpoints import LM_STUDIO
from lmserve.api.lmstudio_ws.errors import SDKError, error_body, invalid
from lmserve.api.lmstudio_ws.files import FileStore
from lmserve.api.lmstudio_ws.protocol import (
    FRAMES,
    CancelPacket,
    ChannelCreate,
    ChannelSend,
    CommunicationWarning,
    KeepAlive,
    RpcCall,
    SignalSubscribe,
)
from lmserve.logbus import LogBus
from lmserve.models.download_jobs import DownloadJobs
from lmserve.models.manager import ModelManager
from lmserve.plugins import Plugin, Plugins

logger = logging.getLogger("lmserve.api")

VOID: Any = object()  # an RPC's "no result": the frame goes without a ``result`` field


@dataclass(frozen=True)
class Context:
    """What an endpoint sees: the app's state and the namespace it was called in."""

    state: State
    namespace: str
    plugin: Plugin | None = None  # the plugin this connection is, by its credentials

    @property
    def plugins(self) -> Plugins:
        return self.state.plugins  # type: ignore[no-any-return]

    @property
    def models(self) -> ModelManager:
        return self.state.models  # type: ignore[no-any-return]

    @property
    def logs(self) -> LogBus:
        return self.state.logs  # type: ignore[no-any-return]

    @property
    def files(self) -> FileStore:
        return self.state.sdk_files  # type: ignore[no-any-return]

    @property
    def downloads(self) -> DownloadJobs:
        return self.state.downloads  # type: ignore[no-any-return]

    @property
    def domain(self) -> Any:
        return "embedding" if self.namespace == "embedding" else "llm"


@dataclass(frozen=True)
class Rpc:
    parameter: type[BaseModel] | None
    handler: Callable[[Context, Any], Awaitable[Any]]


@dataclass(frozen=True)
class ChannelEndpoint:
    parameter: type[BaseModel] | None
    handler: Callable[[Context, Any, Channel], Awaitable[None]]
    long_lived: bool = False  # runs until the client stops it: never holds up a drain
    receives: bool = False  # the client sends it packets (besides ``cancel``): its inbox


@dataclass(frozen=True)
class Namespace:
    rpcs: dict[str, Rpc]
    channels: dict[str, ChannelEndpoint]


class Channel:
    """A handler's end of one channel: ``send`` packets; ``cancelled`` is set by the client;
    an endpoint that ``receives`` reads the client's other packets from ``inbox``."""

    def __init__(self, session: Session, channel_id: int, receives: bool = False) -> None:
        self.session = session
        self.id = channel_id
        self.cancelled = asyncio.Event()
        self.inbox: asyncio.Queue[Any] | None = asyncio.Queue() if receives else None

    async def send(self, packet: dict[str, Any]) -> None:
        await self.session.send({"type": "channelSend", "channelId": self.id, "message": packet})

    def received(self, message: Any) -> None:
        try:
            CancelPacket.model_validate(message)
        except ValidationError:
            if self.inbox is not None:
                self.inbox.put_nowait(message)
                return
            self.session.warn(f"Unexpected message on channel {self.id}: {str(message)[:200]}")
            return
        self.cancelled.set()


class Session:
    def __init__(
        self,
        websocket: WebSocket,
        namespace: str,
        served: Namespace,
        plugin: Plugin | None = None,
    ) -> None:
        self.websocket = websocket
        self.context = Context(websocket.app.state, namespace, plugin)
        self.served = served
        self.lifecycle: Lifecycle = websocket.app.state.lifecycle
        self.channels: dict[int, Channel] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> None:
        text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
        async with self._send_lock:
            await self.websocket.send_text(text)

    def warn(self, warning: str) -> None:
        self._start(self.send({"type": "communicationWarning", "warning": warning}))

    async def run(self) -> None:
        """Serve frames until the client disconnects; then stop everything it started."""
        try:
            while (text := await receive_text(self.websocket)) is not None:
                self.received(text)
        finally:
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.wait(self.tasks)

    def received(self, text: str) -> None:
        try:
            raw = json.loads(text)
        except ValueError:
            self.warn("Received a frame that is not JSON.")
            return
        # str(): a "type" of any JSON value is looked up safely (a list is not hashable).
        kind = FRAMES.get(str(raw.get("type"))) if isinstance(raw, dict) else None
        if kind is None:
            self.warn("Received a frame of no known type.")
            return
        try:
            frame = kind.model_validate(raw)
        except ValidationError as exc:
            self._unreadable(raw, exc)
            return
        if isinstance(frame, RpcCall):
            if frame.endpoint in self.served.rpcs or self._known(frame.endpoint, rpc=True):
                self._start(self._call(frame))
            else:
                self._unknown("rpcCall", "call", frame.endpoint)
        elif isinstance(frame, ChannelCreate):
            if frame.endpoint in self.served.channels or self._known(frame.endpoint, rpc=False):
                self._create(frame)
            else:
                self._unknown("channelCreate", "channel", frame.endpoint)
        elif isinstance(frame, ChannelSend):
            channel = self.channels.get(frame.channelId)
            if channel is None:
                self.warn(
                    f"Received channelSend for unknown channel, channelId = {frame.channelId}"
                )
            else:
                channel.received(frame.message)
        elif isinstance(frame, KeepAlive):
            self._start(self.send({"type": "keepAliveAck"}))
        elif isinstance(frame, CommunicationWarning):
            logger.warning("an SDK client reports: %s", frame.warning[:500])
        elif isinstance(frame, SignalSubscribe):
            # LM Studio's SDKs have no signal endpoints: every one is unknown.
            self._unknown(frame.type, "signal", frame.endpoint)
        # channelAck and signal unsubscriptions need no answer.

    def _known(self, endpoint: str, *, rpc: bool) -> bool:
        """Whether LM Studio has this endpoint in this namespace."""
        known = LM_STUDIO.get(self.context.namespace)
        return known is not None and endpoint in (known.rpcs if rpc else known.channels)

    def _unknown(self, frame_type: str, what: str, endpoint: str) -> None:
        """An endpoint LM Studio does not have: as LM Studio, a warning and no answer."""
        self.refused(what, endpoint, "no such endpoint (a communication warning, no answer)")
        self.warn(f"Received {frame_type} for unknown endpoint, endpoint = {_shown(endpoint)}")

    def refused(self, what: str, endpoint: object, why: str) -> None:
        """The server's log line for a call, channel or signal refused."""
        namespace = self.context.namespace
        shown = _shown(endpoint), _shown(why, 1000)
        logger.warning("refused an SDK %s, %s.%s: %s", what, namespace, *shown)

    def _unreadable(self, raw: dict[str, Any], exc: ValidationError) -> None:
        """A frame that does not parse: answered on its call or channel if it names one."""
        error = invalid(f"{raw['type']} frame", exc).body()
        what = {"rpcCall": "call", "channelCreate": "channel"}.get(raw["type"], "frame")
        self.refused(what, raw.get("endpoint", "?"), error["title"])
        if isinstance(raw.get("callId"), int):
            self._start(self.send({"type": "rpcError", "callId": raw["callId"], "error": error}))
        elif raw["type"] == "channelCreate" and isinstance(raw.get("channelId"), int):
            frame = {"type": "channelError", "channelId": raw["channelId"], "error": error}
            self._start(self.send(frame))
        else:
            self.warn(f"Received an invalid frame: {error['title']}")

    def _start(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Only sending can fail here (the client went away mid-answer).
            logger.debug("an SDK connection's answer was not sent", exc_info=task.exception())

    @contextlib.contextmanager
    def _counted(self, counted: bool) -> Iterator[None]:
        """Refuse new work while the server drains; count it in flight otherwise."""
        if self.lifecycle.draining:
            raise SDKError("The server is shutting down and takes no new requests.")
        if counted:
            self.lifecycle.in_flight += 1
        try:
            yield
        finally:
            if counted:
                self.lifecycle.in_flight -= 1

    async def _call(self, frame: RpcCall) -> None:
        try:
            rpc = self.served.rpcs.get(frame.endpoint)
            if rpc is None:
                raise self._not_served(frame.endpoint)
            with self._counted(True):
                result = await rpc.handler(self.context, _parse(rpc.parameter, frame))
        except Exception as exc:
            error = error_body(exc)
            self.refused("call", frame.endpoint, error["title"])
            await self.send({"type": "rpcError", "callId": frame.callId, "error": error})
            return
        answer: dict[str, Any] = {"type": "rpcResult", "callId": frame.callId}
        if result is not VOID:
            answer["result"] = result
        await self.send(answer)

    def _not_served(self, endpoint: str) -> SDKError:
        return SDKError(
            f"lmserve does not serve the '{self.context.namespace}' namespace's endpoint "
            f"'{endpoint}' (LM Studio's)."
        )

    def _create(self, frame: ChannelCreate) -> None:
        if frame.channelId in self.channels:
            self.warn(
                f"Received channelCreate for already open channel, channelId = {frame.channelId}"
            )
            return
        endpoint = self.served.channels.get(frame.endpoint)
        channel = Channel(self, frame.channelId, endpoint is not None and endpoint.receives)
        self.channels[frame.channelId] = channel
        self._start(self._serve_channel(frame, endpoint, channel))

    async def _serve_channel(
        self, frame: ChannelCreate, endpoint: ChannelEndpoint | None, channel: Channel
    ) -> None:
        try:
            if endpoint is None:
                raise self._not_served(frame.endpoint)
            with self._counted(not endpoint.long_lived):
                parameter = _parse(endpoint.parameter, frame)
                await endpoint.handler(self.context, parameter, channel)
        except Exception as exc:
            body = error_body(exc)
            self.refused("channel", frame.endpoint, body["title"])
            await self.send({"type": "channelError", "channelId": channel.id, "error": body})
        else:
            await self.send({"type": "channelClose", "channelId": channel.id})
        finally:
            self.channels.pop(channel.id, None)


async def receive_text(websocket: WebSocket) -> str | None:
    """The next frame's text (a binary frame read as UTF-8), or None once the client left."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    if message.get("text") is not None:
        return str(message["text"])
    return bytes(message.get("bytes") or b"").decode("utf-8", "replace")


def _shown(sent: object, limit: int = 200) -> str:
    """What a client sent, for a warning or the log: cut short, control characters escaped."""
    text = str(sent)[:limit]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _parse(model: type[BaseModel] | None, frame: RpcCall | ChannelCreate) -> Any:
    value = frame.parameter if isinstance(frame, RpcCall) else frame.creationParameter
    if model is None:
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise invalid(f"parameter for '{frame.endpoint}'", exc) from None
