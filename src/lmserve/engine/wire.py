"""What the server and a model's worker process say to each other.

Messages are tuples pickled over one socket pair (``multiprocessing.connection``), the first
item naming the kind.  Server → worker: the spec first, then ``SUBMIT``, ``CANCEL``, ``CALL``
and ``CLOSE``.  Worker → server: ``READY`` or ``FAILED`` once, then ``EVENTS`` (one message per
engine step, with every event of that step) and ``REPLY`` (the answer to a ``CALL``).

The worker's log records travel on its stderr as single lines that :func:`parse_log_line`
turns back into records, so the server log reads as if the engine ran in process.
"""

from __future__ import annotations

import logging
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmserve.engine.prompt_cache.settings import PromptCacheSettings

# server → worker
SUBMIT = "submit"  # (SUBMIT, request id, GenerationRequest)
CANCEL = "cancel"  # (CANCEL, request id)
CALL = "call"  # (CALL, call id, method name, args)
CLOSE = "close"  # (CLOSE, reason)
# worker → server
READY = "ready"  # (READY, WorkerInfo)
FAILED = "failed"  # (FAILED, message, "load" or "self-check"): the model is not served
EVENTS = "events"  # (EVENTS, [(request id, Event)], slots busy, requests waiting)
REPLY = "reply"  # (REPLY, call id, ok, result or error message)


@dataclass(frozen=True)
class WorkerSpec:
    """What to load and how: everything a worker needs, sent as its first message."""

    path: str
    name: str
    n_layers: int  # from the file's header, for a GPU setting given as a fraction
    n_slots: int
    n_ctx_per_slot: int
    n_batch: int = 512
    n_threads: int = 0
    max_queue: int = 64
    gpu: str = "auto"  # see lmserve.config.check_gpu_setting
    repack: bool = True  # llama.cpp's extra buffer types (weights repacked for the CPU)
    flash_attention: str = "auto"  # see lmserve.config.FLASH_ATTENTION_HELP
    self_check: bool = True
    speculative: str = "auto"  # see lmserve.engine.speculative.SpeculativeMode
    type_k: str = "f16"  # the KV cache's types: see lmserve.config.KV_CACHE_TYPES
    type_v: str = "f16"
    prompt_cache: PromptCacheSettings | None = None  # None: no prompt cache beyond the slots
    # A vision model's projector (mmproj GGUF), and the text that marks where each image of a
    # rendered prompt goes (random per server process, so that no user text can forge one).
    mmproj: str | None = None
    media_marker: str = "<__media__>"
    log_level: int = logging.INFO
    # llama.cpp RPC workers (host:port) whose devices hold layers, checked by the server
    # first (lmserve.rpc.probe); the share of layers each device takes (RPC devices in this
    # order, then local GPUs), empty: by their free memory.
    rpc_servers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()


@dataclass(frozen=True)
class WorkerInfo:
    """What the server needs to know of a loaded model, answered once it is ready."""

    pid: int
    n_vocab: int
    n_ctx_train: int
    n_ctx_per_slot: int
    n_embd: int
    add_bos: bool
    bos_id: int
    eos_id: int
    bos_text: str
    eos_text: str
    chat_template: str | None
    architecture: str
    fim_tokens: tuple[int, int, int] | None
    gpu_layers: int  # asked of llama.cpp (-1: all)
    gpu_offload: bool  # whether this build can offload at all
    flash_attention: bool | None  # None: left to llama.cpp
    flash_attention_reason: str
    # The prompt cache's budgets, or None where it is off (or unable, for this model).
    prompt_cache: dict[str, Any] | None = None
    # Whether a projector is loaded beside the model, so that it takes images.
    vision: bool = False
    # Where the layers went when some are on other devices (RPC workers, GPUs): one entry
    # per device, this machine's CPU last (lmserve.engine.placement).
    placement: tuple[dict[str, Any], ...] = ()


Sender = Callable[[tuple[Any, ...]], None]

_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")  # after a length of -1, for messages of 2 GiB or more


class MessageReader:
    """Messages from bytes read off the socket in pieces of any size, framed as
    ``multiprocessing.connection.Connection.send`` frames them: a 4-byte big-endian length
    (or -1, then an 8-byte one), then the pickle.

    The server's event loop reads whatever has arrived with one ``read`` and takes every
    whole message from it.  ``Connection.recv`` costs two reads a message and its ``poll``
    builds a selector each call: at one stream, ``poll`` alone was a third of the time the
    server spent reading this socket (py-spy).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """The messages completed by ``data``, in order; a partial one waits for its rest."""
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            body = start + _LENGTH.size
            if length == -1:
                if len(buffer) - body < _LONG_LENGTH.size:
                    break
                (length,) = _LONG_LENGTH.unpack_from(buffer, body)
                body += _LONG_LENGTH.size
            end = body + length
            if len(buffer) < end:
                break
            messages.append(pickle.loads(buffer[body:end]))
            start = end
        del buffer[:start]
        return messages


_MARK = "\x1e"  # starts a log record line; anything else on stderr is raw output from C
_FIELD = "\x1f"


class LogLineFormatter(logging.Formatter):
    """A record as one line: level, logger name, message (newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        escaped = message.replace("\\", "\\\\").replace("\n", "\\n")
        return f"{_MARK}{record.levelno}{_FIELD}{record.name}{_FIELD}{escaped}"


def parse_log_line(line: str) -> tuple[int, str, str] | None:
    """(level, logger name, message) of a line the worker logged; ``None`` for raw output."""
    if not line.startswith(_MARK):
        return None
    parts = line[1:].split(_FIELD, 2)
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    message = parts[2].replace("\\n", "\n").replace("\\\\", "\\")
    return int(parts[0]), parts[1], message
