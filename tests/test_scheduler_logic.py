"""The batching engine's bookkeeping, with a scripted stand-in for llama.cpp's context.

These are unit tests of logic (what happens when a decode fails, the queue bound, arrival
order); the real model's behaviour under load is tested in test_concurrency.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from lmserve.engine.scheduler import BatchingEngine
from lmserve.engine.tokens import common_prefix_length
from lmserve.engine.types import (
    Finished,
    GenerationRequest,
    QueueFullError,
    SamplingParams,
    TextDelta,
)

EOS = 0


class FakeModel:
    """A vocabulary where token t > 0 reads as the letter chr(96 + t % 26), 0 is end-of-text."""

    n_vocab = 100

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def piece(self, token: int) -> bytes:
        return chr(96 + token % 26).encode()


@dataclass
class FakeContext:
    n_batch: int = 32
    n_ctx_per_slot: int = 64
    # decide(batch rows) -> status; rows are (token, pos, seq, logits)
    decide: Callable[[list[tuple[int, int, int, bool]]], int] = lambda rows: 0
    rows: list[tuple[int, int, int, bool]] = field(default_factory=list)
    decoded: list[list[tuple[int, int, int, bool]]] = field(default_factory=list)
    kv: dict[int, int] = field(default_factory=dict)  # seq -> number of positions held

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    def clear_batch(self) -> None:
        self.rows = []

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        self.rows.append((token, pos, seq, logits))
        return len(self.rows) - 1

    def decode(self) -> int:
        status = self.decide(self.rows)
        if status == 0:
            self.decoded.append(list(self.rows))
            for _, pos, seq, _ in self.rows:
                self.kv[seq] = max(self.kv.get(seq, 0), pos + 1)
        return status

    def forget(self, seq: int, start: int = 0) -> bool:
        self.kv[seq] = min(self.kv.get(seq, 0), start)
        return True

    def copy_stream(self, source: int, target: int) -> None:
        self.kv[target] = self.kv.get(source, 0)

    def window_start(self, length: int) -> int:
        return 0  # no sliding window

    def sample(self, chain: object, row: int) -> int:
        # Next token: the previous one plus one, so outputs are predictable ("bcd...").
        token, _, _, _ = self.rows[row]
        return token % 25 + 1

    def close(self) -> None:
        pass


def make_engine(context: FakeContext, slots: int = 2, max_queue: int = 8) -> BatchingEngine:
    return BatchingEngine(FakeModel(), context, n_slots=slots, max_queue=max_queue)  # type: ignore[arg-type]


def request(prompt: list[int], max_tokens: int = 5) -> GenerationRequest:
    return GenerationRequest(
        prompt_tokens=prompt, sampling=SamplingParams(temperature=0), max_tokens=max_tokens
    )


async def collect(engine: BatchingEngine, req: GenerationRequest) -> tuple[str, Finished]:
    text = ""
    async for event in engine.submit(req):
        if isinstance(event, TextDelta):
            text += event.text
        else:
            return text, event
    raise AssertionError("no Finished event")


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length(list(range(1000)), [*range(700), 5]) == 700


async def test_generates_until_max_tokens() -> None:
    engine = make_engine(FakeContext())
    try:
        text, done = await collect(engine, request([1, 2, 3], max_tokens=4))
    finally:
        engine.close()
    assert text == "defg"  # tokens 4, 5, 6, 7
    assert done.finish_reason == "length" and done.completion_tokens == 4


async def test_kv_full_with_a_prompt_defers_the_prompt_and_keeps_generating() -> None:
    blocked = {"on": True}

    def decide(rows: list[tuple[int, int, int, bool]]) -> int:
        time.sleep(0.001)  # a decode takes time, so the runner is still running below
        has_prompt_chunk = sum(1 for row in rows if not row[3]) > 0
        return 1 if blocked["on"] and has_prompt_chunk else 0

    context = FakeContext(decide=decide, n_ctx_per_slot=1000)
    engine = make_engine(context)
    try:
        runner = asyncio.create_task(collect(engine, request([5], max_tokens=300)))
        await asyncio.sleep(0.05)
        newcomer = asyncio.create_task(collect(engine, request([9, 9, 9, 9], max_tokens=2)))
        await asyncio.sleep(0.05)
        assert not newcomer.done()  # its prompt cannot be placed yet...
        blocked["on"] = False  # ...until room frees up
        first, second = await asyncio.gather(runner, newcomer)
    finally:
        engine.close()
    assert first[1].finish_reason == "length" and first[1].completion_tokens == 300
    assert second[1].finish_reason == "length" and second[1].error is None


async def test_decode_error_fails_only_that_batch_and_the_engine_goes_on() -> None:
    calls = {"n": 0}

    def decide(rows: list[tuple[int, int, int, bool]]) -> int:
        calls["n"] += 1
        return -1 if calls["n"] == 2 else 0

    engine = make_engine(FakeContext(decide=decide))
    try:
        _, failed = await collect(engine, request([1, 2], max_tokens=10))
        text, ok = await collect(engine, request([3], max_tokens=3))
    finally:
        engine.close()
    assert failed.finish_reason == "error" and "status -1" in (failed.error or "")
    assert ok.finish_reason == "length" and text == "def"


async def test_queue_bound_refuses_beyond_slots_plus_queue() -> None:
    context = FakeContext(decide=lambda rows: 0)
    engine = make_engine(context, slots=1, max_queue=1)
    try:
        # Hold the engine thread so nothing is admitted while we submit.
        with engine._wake:  # the test holds the engine's lock on purpose
            engine.submit(request([1], max_tokens=50))
            engine.submit(request([2], max_tokens=50))
            with pytest.raises(QueueFullError):
                engine.submit(request([3], max_tokens=50))
    finally:
        engine.close()


def slow_decode(rows: list[tuple[int, int, int, bool]]) -> int:
    time.sleep(0.001)  # so that a long request is still running when the test acts
    return 0


async def test_cancelled_request_frees_its_slot_for_the_next() -> None:
    engine = make_engine(FakeContext(decide=slow_decode, n_ctx_per_slot=100_000), slots=1)
    try:
        stream = engine.submit(request([1], max_tokens=10_000))
        async for event in stream:
            if isinstance(event, TextDelta):
                stream.cancel()
        assert stream.finished is not None and stream.finished.finish_reason == "cancelled"
        text, done = await collect(engine, request([2], max_tokens=2))
    finally:
        engine.close()
    assert done.finish_reason == "length" and text == "cd"


async def test_waiting_requests_are_admitted_in_arrival_order() -> None:
    engine = make_engine(FakeContext(), slots=1)
    order: list[int] = []

    async def run(index: int) -> None:
        await collect(engine, request([index + 1], max_tokens=3))
        order.append(index)

    try:
        await asyncio.gather(*(run(i) for i in range(5)))
    finally:
        engine.close()
    assert order == [0, 1, 2, 3, 4]


async def test_prompt_prefix_is_reused_from_the_slot_cache() -> None:
    context = FakeContext()
    engine = make_engine(context, slots=1)
    try:
        await collect(engine, request([7, 8, 9, 10, 11], max_tokens=2))
        _, again = await collect(engine, request([7, 8, 9, 10, 20], max_tokens=2))
    finally:
        engine.close()
    assert again.cached_tokens == 4
    # Only the new token of the prompt went through the model the second time.
    second_prefill = next(batch for batch in context.decoded if (20, 4, 0, True) in batch)
    assert second_prefill == [(20, 4, 0, True)]
