"""Continuous batching on the real server: isolation, cancellation, queueing, prefix cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from lmserve.engine.llama import gpu_offload_supported
from tests.conftest import MODEL_ID, Server, running_server

TOPICS = ["the sea", "a robot", "Paris", "winter", "a cat", "music", "the moon", "bread"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    """A server with 8 slots."""
    with running_server(tmp_path_factory, default_model_file, "--parallel", "8") as server:
        yield server


def request_mix() -> list[dict[str, Any]]:
    """Eight requests that each use a per-request setting the batch must not mix up."""
    base = {"model": MODEL_ID, "max_tokens": 40, "temperature": 0}
    requests = [
        {**base, "messages": [{"role": "user", "content": f"Write two sentences about {t}."}]}
        for t in TOPICS
    ]
    requests[1].update(temperature=1.0, seed=11)
    requests[2].update(stop=[" the", "."])
    requests[3].update(max_tokens=7)
    requests[4].update(logit_bias={"1": -100, "30": 5, "314": -100})
    requests[5].update(frequency_penalty=1.5, presence_penalty=0.5)
    requests[6].update(temperature=0.9, seed=99, extra_body={"top_k": 5, "repeat_penalty": 1.3})
    return requests


async def _complete(client: AsyncOpenAI, request: dict[str, Any]) -> tuple[str, int]:
    completion = await client.chat.completions.create(**request)
    return completion.choices[0].message.content, completion.usage.completion_tokens


@pytest.mark.xfail(
    gpu_offload_supported(),
    reason="llama.cpp's GPU kernels round differently by batch size: measured on an H200, "
    "0 of 16 greedy answers equal alone and batched (near-tied tokens flip)",
    strict=False,
)
async def test_eight_concurrent_requests_equal_their_solo_outputs(wide: Server) -> None:
    requests = request_mix()
    async with AsyncOpenAI(base_url=wide.api_url, api_key="x") as client:
        solo = [await _complete(client, request) for request in requests]
        together = await asyncio.gather(*(_complete(client, r) for r in requests))
    assert together == solo
    assert solo[3][1] == 7  # the max_tokens one stopped where asked
    assert all(" the" not in text and "." not in text for text in (solo[2][0],))


async def test_requests_generate_at_the_same_time(wide: Server) -> None:
    """Nobody waits for another request to finish: all eight stream interleaved."""
    firsts: list[float] = []
    lasts: list[float] = []

    async def stream(client: AsyncOpenAI, topic: str) -> None:
        chunks = await client.chat.completions.create(
            model=MODEL_ID,
            max_tokens=48,
            temperature=0,
            stream=True,
            messages=[{"role": "user", "content": f"Describe {topic} in detail."}],
            extra_body={"logit_bias": {"2": -100, "0": -100}},
        )
        first = None
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
        firsts.append(first)
        lasts.append(time.perf_counter())

    async with AsyncOpenAI(base_url=wide.api_url, api_key="x") as client:
        await asyncio.gather(*(stream(client, topic) for topic in TOPICS))
    # Every request had its first token before any request finished.
    assert max(firsts) < min(lasts)


def _slots(server: Server) -> list[dict[str, Any]]:
    return httpx.get(f"{server.base_url}/lmserve/slots").json()["models"][0]["slots"]


async def _until(server: Server, condition: Any, within: float = 30.0) -> None:
    """Poll the server's slot stats until ``condition(model_stats)`` holds.

    Tests wait for a state (a slot generating, a request queued) instead of sleeping a fixed
    time, which a fast machine (a GPU makes 500 tokens/s) outruns.
    """
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        while time.monotonic() < deadline:
            model = (await http.get("/lmserve/slots")).json()["models"][0]
            if condition(model):
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"not reached within {within} s: {model}")


def _generating(model: dict[str, Any]) -> bool:
    return any(slot["busy"] and (slot["generated_tokens"] or 0) > 0 for slot in model["slots"])


def _wait_idle(server: Server, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if not any(slot["busy"] for slot in _slots(server)):
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"a slot was still busy after {within} s: {_slots(server)}")


def test_stream_disconnect_frees_the_slot_within_a_second(wide: Server) -> None:
    body = {
        "model": MODEL_ID,
        "stream": True,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "logit_bias": {"2": -100, "0": -100},
    }
    with httpx.Client(base_url=wide.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
            assert any(slot["busy"] for slot in _slots(wide))
        # Leaving the block closes the connection mid-stream.
        assert _wait_idle(wide, within=1.0) < 1.0
    assert (
        OpenAI(base_url=wide.api_url, api_key="x")
        .chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        .choices[0]
        .message.content
    )


def test_non_streaming_timeout_frees_the_slot(wide: Server) -> None:
    body = {
        "model": MODEL_ID,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "logit_bias": {"2": -100, "0": -100},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{wide.api_url}/chat/completions", json=body, timeout=0.5)
    assert _wait_idle(wide, within=1.0) < 1.0


def test_second_turn_reuses_the_cached_prefix(wide: Server) -> None:
    client = OpenAI(base_url=wide.api_url, api_key="x")
    system = {"role": "system", "content": "You are a terse assistant for a ship's crew. " * 8}
    history = [system, {"role": "user", "content": "Name a knot."}]
    first = client.chat.completions.create(
        model=MODEL_ID, messages=history, max_tokens=20, temperature=0
    )
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And another one?"},
    ]
    second = client.chat.completions.create(
        model=MODEL_ID, messages=history, max_tokens=20, temperature=0
    )
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1
    assert cached < second.usage.prompt_tokens


async def test_shared_system_prompt_is_copied_between_slots(wide: Server) -> None:
    """A new conversation with the same long system prompt as a running one reuses its KV."""
    system = {"role": "system", "content": "Rules of the lighthouse: keep the lamp lit. " * 10}

    def engine_stats() -> dict[str, Any]:
        return httpx.get(f"{wide.base_url}/lmserve/slots").json()["models"][0]["engine"]

    copies_before = engine_stats()["stream_copies"]
    async with AsyncOpenAI(base_url=wide.api_url, api_key="x") as client:
        running = asyncio.create_task(
            client.chat.completions.create(
                model=MODEL_ID,
                max_tokens=400,
                messages=[system, {"role": "user", "content": "What is rule one?"}],
                extra_body={"logit_bias": {"2": -100, "0": -100}},
            )
        )
        await _until(wide, _generating)  # its slot now holds the system prompt, and is busy
        other = await client.chat.completions.create(
            model=MODEL_ID,
            max_tokens=5,
            messages=[system, {"role": "user", "content": "Who keeps the lamp?"}],
        )
        first = await running
    assert first.usage.prompt_tokens > 100
    assert other.usage.prompt_tokens_details.cached_tokens >= 100
    assert engine_stats()["stream_copies"] > copies_before


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    """One slot and a queue of one."""
    with running_server(
        tmp_path_factory, default_model_file, "--parallel", "1", "--max-queue", "1"
    ) as server:
        yield server


async def test_full_queue_answers_503_with_retry_after(narrow: Server) -> None:
    long_body = {
        "model": MODEL_ID,
        "max_tokens": 500,
        "stream": True,
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "logit_bias": {"2": -100, "0": -100},
    }
    async with httpx.AsyncClient(base_url=narrow.base_url, timeout=120) as http:

        async def occupy() -> str:
            async with http.stream("POST", "/v1/chat/completions", json=long_body) as response:
                return (await response.aread()).decode()

        running = asyncio.create_task(occupy())
        await _until(narrow, _generating)
        queued = asyncio.create_task(occupy())
        await _until(narrow, lambda model: model["queue_depth"] == 1)
        for stream in (False, True):
            refused = await http.post("/v1/chat/completions", json={**long_body, "stream": stream})
            assert refused.status_code == 503
            assert refused.headers["retry-after"]
            error = refused.json()["error"]
            assert error["code"] == "queue_full" and error["type"] == "server_error"
        # Both accepted requests complete; nothing was lost.
        for task in (running, queued):
            assert (await task).rstrip().endswith("data: [DONE]")
    ok = httpx.post(
        f"{narrow.api_url}/chat/completions",
        timeout=60,
        json={"model": MODEL_ID, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert ok.status_code == 200


async def test_queued_requests_run_in_arrival_order(narrow: Server) -> None:
    finished: list[int] = []
    async with AsyncOpenAI(base_url=narrow.api_url, api_key="x") as client:

        async def ask(index: int) -> None:
            await client.chat.completions.create(
                model=MODEL_ID,
                max_tokens=12,
                temperature=0,
                messages=[{"role": "user", "content": f"Say {index}."}],
            )
            finished.append(index)

        tasks = []
        for index in range(2):  # one runs, one waits: the queue holds a single request
            tasks.append(asyncio.create_task(ask(index)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
    assert finished == [0, 1]


@pytest.fixture(scope="module")
def tiny_context(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[Server]:
    with running_server(tmp_path_factory, default_model_file, "--context-length", "256") as s:
        yield s


def test_generation_stops_with_length_when_the_slot_context_is_full(tiny_context: Server) -> None:
    client = OpenAI(base_url=tiny_context.api_url, api_key="x")
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Count to one thousand."}],
        logit_bias={"2": -100, "0": -100},
    )
    usage = completion.usage
    n_ctx = httpx.get(f"{tiny_context.base_url}/lmserve/slots").json()["models"][0]["n_ctx"]
    assert n_ctx == 256
    assert completion.choices[0].finish_reason == "length"
    assert usage.prompt_tokens + usage.completion_tokens == n_ctx
