"""What several test modules share: tool definitions in each API's shape, a reader of the
rendered prompts, and a stand-in for a generation that fails half-way."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from lmserve.api.common.generation import Prepared
from lmserve.config import SDK_DISCOVERY_PORTS
from lmserve.engine.llama import LlamaModel, gpu_offload_supported
from lmserve.engine.types import Finished, SamplingParams, TextDelta
from tests.conftest import MODEL_ID, Server

# (name, description, JSON schema of the arguments)
FUNCTIONS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "get_weather",
        "Current weather in a city",
        {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    ),
    (
        "add",
        "Add two integers",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    ),
]
SCHEMAS = {name: schema for name, _, schema in FUNCTIONS}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def chat_tools() -> list[dict[str, Any]]:
    """OpenAI chat completions' shape."""
    return [
        {"type": "function", "function": {"name": name, "description": text, "parameters": schema}}
        for name, text, schema in FUNCTIONS
    ]


def responses_tools() -> list[dict[str, Any]]:
    """OpenAI Responses' shape."""
    return [
        {"type": "function", "name": name, "description": text, "parameters": schema}
        for name, text, schema in FUNCTIONS
    ]


def anthropic_tools() -> list[dict[str, Any]]:
    """Anthropic Messages' shape."""
    return [
        {"name": name, "description": text, "input_schema": schema}
        for name, text, schema in FUNCTIONS
    ]


@contextmanager
def _following(server: Server, pick: Callable[[dict[str, Any]], Any]) -> Iterator[list[Any]]:
    """What ``pick`` makes of each log stream record (``None``: nothing) while the block runs."""
    seen: list[Any] = []
    ready = threading.Event()
    stop = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{server.base_url}/lmserve/log/stream", timeout=None) as r:
            for line in r.iter_lines():
                ready.set()
                if stop.is_set():
                    return
                if line.startswith("data: "):
                    picked = pick(json.loads(line[6:]))
                    if picked is not None:
                        seen.append(picked)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield seen
    finally:
        stop.set()


def stream_with(
    api: httpx.Client, model: str, on_event: Callable[[int, httpx.Response], None]
) -> tuple[httpx.Response, list[str]]:
    """A streamed chat that would go on for 2,000 tokens (end of text ignored): each
    ``data:`` line is kept, and ``on_event(how many so far, the response)`` may cut it short
    (kill what serves it, say) or not.  Returns the response (its headers) and the lines."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 2000,
        "stream": True,
        "ignore_eos": True,
    }
    events: list[str] = []
    with api.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                events.append(line)
                on_event(len(events), response)
    return response, events


def log_records(server: Server, kinds: tuple[str, ...] = ()) -> Any:
    """The log stream's records (of ``kinds``, else all) made while the block runs."""
    return _following(
        server, lambda record: record if not kinds or record["type"] in kinds else None
    )


def prompts(server: Server) -> Any:
    """The rendered prompts of the requests made inside the block (from the log stream)."""
    return _following(
        server,
        lambda record: record["prompt"] if record["type"] == "llm.prediction.input" else None,
    )


def failing_generation() -> Any:
    """A stand-in for a Generation whose engine fails after one piece of text."""
    model: Any = SimpleNamespace(identifier=MODEL_ID)
    prepared = Prepared("x", model, ["Hi"], [[1, 2, 3]], SamplingParams(), None, (), 1)

    async def events() -> Any:
        yield 0, TextDelta("Hel", 1)
        yield 0, Finished("error", "failed", 3, 1, 0, None, 0.1, error="decode failed")

    return SimpleNamespace(prepared=prepared, streams=[None], events=events)


def vocabulary(path: Path) -> LlamaModel:
    """A model file's vocabulary, for tests that tokenize.

    A vocabulary-only load crashed llama.cpp's CUDA build (seen on an H200), so a build with a
    GPU backend loads the whole model, on the CPU, instead.
    """
    return LlamaModel(path, vocab_only=not gpu_offload_supported())


def _greets(port: int) -> bool:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/lmstudio-greeting", timeout=1)
        return answer.status_code == 200 and answer.json().get("lmstudio") is True
    except (httpx.HTTPError, ValueError):
        return False


def free_sdk_port() -> int | str:
    """An LM Studio SDK discovery port a test's server can take (so that clients with no host,
    such as ``python -m lmstudio.plugin``, find it), or why none can be."""
    for port in SDK_DISCOVERY_PORTS:
        if _greets(port):
            return f"an LM Studio server already answers on 127.0.0.1:{port}, where the SDK looks"
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken by another program: the SDK passes it by
            return port
    return "every LM Studio SDK port is taken by another program"
