"""Server-sent events in OpenAI's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
from openai import OpenAI

from tests.conftest import MODEL_ID

MESSAGES = [{"role": "user", "content": "Tell me about the moon."}]


def test_stream_reassembles_to_the_non_streamed_text(client: OpenAI) -> None:
    params = {
        "model": MODEL_ID,
        "messages": MESSAGES,
        "temperature": 0.9,
        "seed": 77,
        "max_tokens": 40,
    }
    whole = client.chat.completions.create(**params)
    chunks = list(client.chat.completions.create(**params, stream=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(chunk.id == chunks[0].id for chunk in chunks)
    assert len(chunks) > 10  # token by token, not one lump


def test_stream_wire_format(http: httpx.Client) -> None:
    body = {
        "model": MODEL_ID,
        "messages": MESSAGES,
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    first, *middle, last_choice, usage = events
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert all("content" in event["choices"][0]["delta"] for event in middle)
    assert all(event["choices"][0]["finish_reason"] is None for event in [first, *middle])
    assert last_choice["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 8
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 8


def test_usage_chunk_only_when_asked(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=4, stream=True)
    )
    assert all(chunk.usage is None for chunk in chunks)
    with_usage = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=MESSAGES,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 4


# -- keep-alive while the prompt is read (no model needed) ---------------------------------------


async def test_a_slow_first_chunk_is_preceded_by_keepalive_comments() -> None:
    import asyncio

    from lmserve.api.common.streaming import KEEPALIVE, with_keepalive

    async def slow() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.35)
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    seen = [chunk async for chunk in with_keepalive(slow(), interval=0.1)]
    assert seen[-2:] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert seen[:-2] == [KEEPALIVE] * len(seen[:-2]) and len(seen) - 2 >= 2
    assert KEEPALIVE.startswith(b":")  # an SSE comment: every parser skips it


async def test_closing_the_stream_early_runs_the_producers_clean_up() -> None:
    import asyncio

    from lmserve.api.common.streaming import with_keepalive

    cleaned = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                await asyncio.sleep(10)
                yield b"never"
        finally:
            cleaned.set()

    stream = with_keepalive(endless(), interval=0.05)
    assert await stream.__anext__() == b": keep-alive\n\n"
    await stream.aclose()  # type: ignore[attr-defined]
    assert cleaned.is_set()
