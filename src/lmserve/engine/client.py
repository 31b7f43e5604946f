"""The server's end of a model's worker process (:mod:`lmserve.engine.worker`).

An :class:`EngineWorker` starts the process, waits for it to load, then forwards requests to
it and hands the events that come back to each request's :class:`GenerationStream`.  The
event loop itself reads the pipe (``add_reader``): one wake-up per engine step, as an engine
in process cost, where a reading thread that then woke the loop would cost two, each taking
a core from llama.cpp's threads mid-decode.  A thread reads the worker's stderr into the
server log.

If the worker dies, every request in flight ends at once with a ``crashed`` event, pending
calls raise :class:`EngineCrashedError`, and ``on_exit`` is told why, so the model manager can
load the model again.  Nothing in this module loads llama.cpp into the server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import lmserve
from lmserve.engine import wire
from lmserve.engine.exits import WorkerExit, crash_reason, exit_description, load_failure
from lmserve.engine.types import (
    EngineClosedError,
    EngineCrashedError,
    EngineError,
    Event,
    Finished,
    GenerationRequest,
    GenerationStream,
    ImageInput,
    Outbox,
    QueueFullError,
    TextDelta,
    TokenizedPrompt,
    WorkerStartError,
)
from lmserve.engine.wire import WorkerInfo, WorkerSpec

logger = logging.getLogger("lmserve.engine")

START_TIMEOUT = 300.0  # seconds: large models on slow disks take a while even memory-mapped
CLOSE_TIMEOUT = 30.0
_STDERR_LINES = 80  # kept for the reason of a crash
_READ_SIZE = 1 << 16  # bytes a read of the worker's socket takes at most


class EngineCalls:
    """An engine's calls besides generating, each one message to where the model runs and
    its answer (:meth:`_call`): an :class:`EngineWorker` sends them down its pipe, a model's
    Ray Serve replicas (:mod:`lmserve.replicas`) over Ray."""

    replicated = False  # True where the model runs as Ray Serve replicas

    async def _call(self, method: str, *args: Any) -> Any:
        raise NotImplementedError

    async def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool = True
    ) -> list[int]:
        result: list[int] = await self._call("tokenize", text, add_special, parse_special)
        return result

    async def tokenize_prompt(self, text: str) -> list[int]:
        """A rendered chat prompt's tokens: special tokens parsed, BOS added once at most."""
        result: list[int] = await self._call("tokenize_prompt", text)
        return result

    async def tokenize_images(self, text: str, images: list[ImageInput]) -> TokenizedPrompt:
        """A rendered chat prompt with images (one media marker each): its tokens, each
        image's placeholders in them; raises :class:`ImageError` for images the model's
        projector cannot take (or a model without one)."""
        result: TokenizedPrompt = await self._call("tokenize_images", text, images)
        return result

    async def detokenize(self, tokens: list[int]) -> str:
        result: str = await self._call("detokenize", tokens)
        return result

    async def rerank(self, query: str, documents: list[str]) -> list[tuple[float, int]]:
        """Each document's score against ``query`` by this reranker, and the tokens of its
        pair; raises :class:`RerankInputError` for a pair that does not fit."""
        result: list[tuple[float, int]] = await self._call("rerank", query, documents)
        return result

    async def embed(self, token_lists: list[list[int]]) -> list[np.ndarray]:
        """The normalised embedding of each tokenized input."""
        vectors: list[bytes] = await self._call("embed", token_lists)
        return [np.frombuffer(vector, dtype="<f4") for vector in vectors]

    async def load_draft(self, name: str, path: str) -> None:
        """Load the draft model at ``path`` into the worker, under ``name`` (what requests
        give as their ``draft_model``); raises :class:`DraftModelError` for a draft of
        another vocabulary, :class:`EngineError` for a file llama.cpp cannot load."""
        await self._call("load_draft", name, path)

    async def snapshot(self) -> dict[str, Any]:
        """What each slot holds and the engine's running totals."""
        result: dict[str, Any] = await self._call("snapshot")
        return result

    async def clear_prompt_cache(self, memory: bool, disk: bool) -> dict[str, int]:
        """Empty the worker's prompt cache tiers (memory, disk or both); blocks each had."""
        result: dict[str, int] = await self._call("clear_prompt_cache", memory, disk)
        return result


class EngineWorker(EngineCalls):
    """One model's engine, in its own process.  See the module docstring."""

    def __init__(
        self,
        spec: WorkerSpec,
        loop: asyncio.AbstractEventLoop,
        on_exit: Callable[[WorkerExit], None] | None = None,
    ) -> None:
        """Start the worker and wait until it is ready (blocking: call off the event loop);
        ``loop`` then reads its pipe.  ``on_exit`` is called from a thread if it dies.

        Raises :class:`WorkerStartError` if it cannot load the model or dies trying.
        """
        self.spec = spec
        self._loop = loop
        self.name = spec.name
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._streams: dict[int, GenerationStream] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._outbox = Outbox()
        self._closing = False
        self._closed_reason: str | None = None
        self._crash: str | None = None
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_LINES)
        self.busy_slots = 0
        self.queue_depth = 0
        here, theirs = multiprocessing.Pipe(duplex=True)
        self._connection = here
        self._messages = wire.MessageReader()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "lmserve.engine.worker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_worker_environment(),
        )
        theirs.close()
        self.pid = self._process.pid
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, name=f"worker-stderr-{spec.name}", daemon=True
        )
        self._stderr_thread.start()
        self.info = self._handshake()
        self.n_slots = spec.n_slots
        self.max_queue = spec.max_queue
        self.n_ctx_per_slot = self.info.n_ctx_per_slot
        # Runs before the loop sees this worker: the caller's result comes through it too.
        loop.call_soon_threadsafe(self._attach)

    # -- start-up --------------------------------------------------------------------------------
    def _handshake(self) -> WorkerInfo:
        try:
            self._connection.send(self.spec)
            if not self._connection.poll(START_TIMEOUT):
                self._process.kill()
                self._process.wait()
                raise WorkerStartError(f"loading took more than {START_TIMEOUT:.0f} s")
            message = self._connection.recv()
        except (EOFError, OSError):
            returncode = self._process.wait()
            self._stderr_thread.join(2.0)
            raise WorkerStartError(
                crash_reason(returncode, "\n".join(self._stderr_tail), self.spec.rpc_servers),
                crashed=True,
            ) from None
        if message[0] == wire.READY:
            return message[1]
        self._process.wait()
        self._connection.close()
        if message[2] == "self-check":
            raise WorkerStartError(f"the self-check failed: {message[1]}", self_check=True)
        raise WorkerStartError(load_failure(str(message[1])))

    # -- requests --------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Queue ``request`` in the worker; raises :class:`QueueFullError` when
        ``n_slots + max_queue`` requests are already there, or :class:`EngineClosedError`."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._check_open()
            if len(self._streams) >= self.n_slots + self.max_queue:
                waiting = len(self._streams) - self.n_slots
                raise QueueFullError(f"{waiting} requests are already waiting")
            request_id = next(self._ids)
            stream = GenerationStream(
                request, loop, self._outbox, on_cancel=lambda: self._send((wire.CANCEL, request_id))
            )
            self._streams[request_id] = stream
        self._send((wire.SUBMIT, request_id, request))
        return stream

    @property
    def in_flight(self) -> int:
        """Requests submitted whose last event has not come back yet."""
        return len(self._streams)

    async def _call(self, method: str, *args: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._check_open()
            call_id = next(self._ids)
            self._calls[call_id] = future
        self._send((wire.CALL, call_id, method, args))
        try:
            return await future
        finally:
            with self._lock:
                self._calls.pop(call_id, None)

    def _check_open(self) -> None:
        if self._crash is not None:
            raise EngineCrashedError(self._crash)
        if self._closing:
            raise EngineClosedError("the engine is shutting down")

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self._connection.send(message)
        except (OSError, ValueError):
            pass  # the worker is gone; the reading thread fails what was in flight

    # -- reading ---------------------------------------------------------------------------------
    def _attach(self) -> None:
        fd = self._connection.fileno()
        self._loop.add_reader(fd, self._readable)
        # uvloop makes the socket non-blocking, but writes to the worker must not fail on a
        # full buffer.  Reads do not block either way: the loop calls _readable only when
        # bytes are waiting, and one read takes what is there, a message half arrived waits
        # in the reader for its rest.
        os.set_blocking(fd, True)

    def _readable(self) -> None:
        """On the event loop: every message that has arrived (usually one engine step's)."""
        try:
            data = os.read(self._connection.fileno(), _READ_SIZE)
        except OSError:
            data = b""
        if not data:  # the worker closed its end: it exited or died
            self._loop.remove_reader(self._connection.fileno())
            self._connection.close()
            # Waiting for the process to be reaped must not hold up the event loop.
            threading.Thread(
                target=self._ended, name=f"worker-end-{self.name}", daemon=True
            ).start()
            return
        for message in self._messages.feed(data):
            kind = message[0]
            if kind == wire.EVENTS:
                self.busy_slots, self.queue_depth = message[2], message[3]
                self._deliver(message[1])
            elif kind == wire.REPLY:
                self._settle(message[1], message[2], message[3])

    def _deliver(self, items: list[tuple[int, Event]]) -> None:
        with self._lock:
            for request_id, event in items:
                stream = (
                    self._streams.pop(request_id, None)
                    if isinstance(event, Finished)
                    else self._streams.get(request_id)
                )
                if stream is not None:
                    if isinstance(event, TextDelta):
                        stream.completion_tokens = event.completion_tokens
                    stream.deliver(event)

    def _settle(self, call_id: int, ok: bool, result: Any) -> None:
        with self._lock:
            future = self._calls.get(call_id)
        if future is None or future.done():
            return
        if ok:
            future.set_result(result)
        else:  # the worker's own exception (a UnicodeEncodeError for a lone surrogate...)
            error = result if isinstance(result, BaseException) else EngineError(str(result))
            future.set_exception(error)

    def _ended(self) -> None:
        """The pipe closed: the worker exited, because we closed it or because it died.

        In a thread of its own; what was in flight is failed through the event loop."""
        try:
            returncode = self._process.wait(10.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            returncode = self._process.wait()
        self._stderr_thread.join(2.0)
        with self._lock:
            expected = self._closing
            if expected:
                message = self._closed_reason or "the engine closed"
            else:
                tail = "\n".join(self._stderr_tail)
                reason = crash_reason(returncode, tail, self.spec.rpc_servers)
                message = f"the engine of model '{self.name}' crashed: {reason}"
                self._crash = message
            streams, self._streams = list(self._streams.values()), {}
            calls, self._calls = list(self._calls.values()), {}
        labels = tuple(s.request.label or f"#{s.request.number}" for s in streams)
        if not expected:
            logger.error(
                "the engine process of %s (pid %d) %s; %d requests in flight%s",
                self.name,
                self.pid,
                exit_description(returncode),
                len(streams),
                f": {', '.join(labels)}" if labels else "",
            )
            output = "\n".join(line for line in self._stderr_tail if line.strip())
            if output:
                logger.error("the last output of that engine process:\n%s", output)
        for stream in streams:
            failed = Finished.failure(
                stream.request,
                message,
                completion_tokens=stream.completion_tokens,
                unavailable=expected,
                crashed=not expected,
            )
            self._outbox.put(stream, failed)
        self._outbox.flush()
        for future in calls:
            error = EngineCrashedError(message) if not expected else EngineClosedError(message)
            _resolve_soon(future, None, error)
        if not expected and self._on_exit is not None:
            self._on_exit(WorkerExit(self.name, self.pid, returncode, message, labels))

    def _read_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        for raw in stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            record = wire.parse_log_line(line)
            if record is not None:
                level, name, message = record
                logging.getLogger(name).log(level, "%s", message)
                continue
            # Output from C or a crash dump: kept for the crash report, logged at debug level.
            self._stderr_tail.append(line)
            if line.strip():
                logger.debug("engine process of %s: %s", self.name, line)

    # -- the end -----------------------------------------------------------------------------------
    def close(self, reason: str = "the server is shutting down") -> None:
        """Stop: requests in flight end as unavailable, saying ``reason`` (blocking)."""
        with self._lock:
            if self._closing or self._crash is not None:
                return  # closed, or dead: the reading thread has reaped the process
            self._closing = True
            self._closed_reason = reason
        self._send((wire.CLOSE, reason))
        try:
            self._process.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("the engine process of %s did not stop; killing it", self.name)
            self._process.kill()
            self._process.wait()
        # The event loop sees the pipe close, and fails whatever had not finished.


def _resolve_soon(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits any more
        future.get_loop().call_soon_threadsafe(settle)


def _worker_environment() -> dict[str, str]:
    """This environment, with this process's lmserve first on the path, so the worker runs
    the same code even when the server was started from a source tree."""
    source = str(Path(lmserve.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": source + (os.pathsep + path if path else "")}
