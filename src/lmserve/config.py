"""Server settings, gathered from the command line into one immutable object."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1234
DEFAULT_CONTEXT_LENGTH = 4096  # per slot, as LM Studio's default


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model: str | None = None  # the model to load at start; None: the default model
    parallel: int = 4  # slots per model: LM Studio's "max concurrent predictions"
    context_length: int = DEFAULT_CONTEXT_LENGTH  # tokens per slot
    max_queue: int = 64  # requests waiting for a slot, beyond which we answer 503
    threads: int = 0  # 0: all cores
    batch_size: int = 512
    fetch_default_model: bool = True
