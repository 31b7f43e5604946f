"""Continuous batching: many requests share one llama.cpp context, one decode call per step.

One thread owns the context.  Each step it

1. admits waiting requests into free slots (a slot is a sequence id with its own KV stream),
   picking the slot whose cached tokens share the longest prefix with the new prompt so that
   prefix is not computed again;
2. packs one batch: the last sampled token of every generating sequence, then chunks of the
   prompts still being read, each token tagged with its sequence id;
3. calls ``llama_decode`` once;
4. samples every sequence from its own row of logits with its own C sampler chain, and hands
   the text to the request's stream.

Requests join and leave between steps, so nobody waits for another request to finish.  A
cancelled request leaves at the next step and its slot is free again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from lmserve.engine.llama import LlamaContext, LlamaModel, SamplerChain
from lmserve.engine.text import StopMatcher, Utf8Assembler
from lmserve.engine.types import (
    EngineClosedError,
    Finished,
    FinishReason,
    GenerationRequest,
    GenerationStream,
    QueueFullError,
    StopReason,
    TextDelta,
)

logger = logging.getLogger("lmserve.engine")

_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"; never pass it on

_FINISH_REASONS: dict[StopReason, FinishReason] = {
    "eosFound": "stop",
    "stopStringFound": "stop",
    "maxPredictedTokensReached": "length",
    "contextLengthReached": "length",
    "userStopped": "cancelled",
    "failed": "error",
}


@dataclass
class _Job:
    stream: GenerationStream
    chain: SamplerChain
    prompt: list[int]
    submitted: float
    next_prompt_index: int = 0
    cached_tokens: int = 0
    pending_token: int | None = None
    row: int | None = None
    generated: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    utf8: Utf8Assembler = field(default_factory=Utf8Assembler)
    stops: StopMatcher | None = None

    @property
    def request(self) -> GenerationRequest:
        return self.stream.request

    @property
    def prefilling(self) -> bool:
        return self.next_prompt_index < len(self.prompt)


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # exactly what the KV cache holds
    job: _Job | None = None
    last_used: float = 0.0


def common_prefix_length(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    i = 0
    while i < limit and a[i] == b[i]:
        i += 1
    return i


def resolve_seed(seed: int | None) -> int:
    """A 32-bit seed for llama.cpp; ``None`` or -1 draws a random one."""
    if seed is None or seed == -1:
        return random.getrandbits(31)
    seed &= 0xFFFFFFFF
    return seed - 1 if seed == _DEFAULT_SEED else seed


class BatchingEngine:
    """The continuous-batching engine behind :class:`lmserve.engine.types.Engine`."""

    def __init__(
        self,
        model: LlamaModel,
        context: LlamaContext,
        *,
        n_slots: int,
        max_queue: int = 64,
        name: str = "model",
    ) -> None:
        self.model = model
        self.context = context
        self.n_slots = n_slots
        self.n_ctx_per_slot = context.n_ctx_per_slot
        self.max_queue = max_queue
        self._slots = [_Slot(seq) for seq in range(n_slots)]
        self._waiting: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # -- the asyncio side ---------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationStream:
        stream = GenerationStream(request, asyncio.get_running_loop())
        chain = SamplerChain(self.model, request.sampling, resolve_seed(request.sampling.seed))
        chain.remember(request.prompt_tokens)
        job = _Job(
            stream=stream,
            chain=chain,
            prompt=list(request.prompt_tokens),
            submitted=time.perf_counter(),
        )
        if request.stop:
            job.stops = StopMatcher(request.stop)
        with self._wake:
            if not self._running:
                chain.close()
                raise EngineClosedError("the engine is shutting down")
            if len(self._waiting) >= self.max_queue and not self._free_slot_count():
                chain.close()
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(job)
            self._wake.notify()
        return stream

    def slots(self) -> list[dict[str, object]]:
        """A snapshot of the slots, for stats; read without locking (values may be a step old)."""
        snapshot = []
        for slot in self._slots:
            job = slot.job
            snapshot.append(
                {
                    "id": slot.seq,
                    "busy": job is not None,
                    "request": job.request.number if job else None,
                    "prompt_tokens": len(job.prompt) if job else None,
                    "generated_tokens": job.generated if job else None,
                    "cached_tokens": len(slot.tokens),
                    "n_ctx": self.n_ctx_per_slot,
                }
            )
        return snapshot

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def busy_slots(self) -> int:
        return sum(1 for slot in self._slots if slot.job is not None)

    def close(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify()
        self._thread.join()
        self.context.close()

    # -- the engine thread ----------------------------------------------------------------------
    def _free_slot_count(self) -> int:
        return sum(1 for slot in self._slots if slot.job is None)

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while self._running and not self._waiting and not self._active():
                        self._wake.wait()
                    if not self._running:
                        break
                    self._admit()
                self._step()
        except Exception:  # a bug here must not leave clients hanging forever
            logger.exception("engine loop crashed")
        finally:
            self._fail_everything("the server is shutting down")

    def _active(self) -> list[_Job]:
        return [slot.job for slot in self._slots if slot.job is not None]

    def _admit(self) -> None:
        """Move waiting jobs into free slots, reusing the longest cached prefix (lock held)."""
        while self._waiting:
            job = self._waiting[0]
            if job.stream.cancelled:
                self._waiting.popleft()
                self._finish(job, "userStopped", slot=None)
                continue
            free = [slot for slot in self._slots if slot.job is None]
            if not free:
                return
            self._waiting.popleft()
            best = max(
                free,
                key=lambda s: (common_prefix_length(s.tokens, job.prompt), -s.last_used),
            )
            reuse = common_prefix_length(best.tokens, job.prompt)
            reuse = min(reuse, len(job.prompt) - 1)  # the last prompt token must be decoded
            if reuse < len(best.tokens) and not self.context.forget(best.seq, reuse):
                # Some caches (recurrent, sliding-window) cannot drop a tail: start over.
                self.context.forget(best.seq, 0)
                reuse = 0
            del best.tokens[reuse:]
            job.next_prompt_index = reuse
            job.cached_tokens = reuse
            best.job = job

    def _step(self) -> None:
        ctx = self.context
        for slot in self._slots:
            if slot.job is not None and slot.job.stream.cancelled:
                self._finish(slot.job, "userStopped", slot)
        busy = [slot for slot in self._slots if slot.job is not None]
        if not busy:
            return
        ctx.clear_batch()
        # Generating sequences first: each adds its one pending token.
        for slot in busy:
            job = slot.job
            assert job is not None
            job.row = None
            if job.pending_token is not None:
                job.row = ctx.add(job.pending_token, len(slot.tokens), slot.seq, True)
                slot.tokens.append(job.pending_token)
                job.pending_token = None
        # Then prompt chunks in arrival order, as far as the batch has room.
        for slot in sorted(busy, key=lambda s: s.job.submitted if s.job else 0.0):
            job = slot.job
            assert job is not None
            room = ctx.n_batch - ctx.batch_size
            if not job.prefilling or room <= 0:
                continue
            end = min(len(job.prompt), job.next_prompt_index + room)
            for index in range(job.next_prompt_index, end):
                last = index == len(job.prompt) - 1
                row = ctx.add(job.prompt[index], index, slot.seq, last)
                if last:
                    job.row = row
            slot.tokens.extend(job.prompt[job.next_prompt_index : end])
            job.next_prompt_index = end
        if ctx.batch_size == 0:
            return
        status = ctx.decode()
        if status != 0:
            self._decode_failed(busy, status)
            return
        now = time.perf_counter()
        for slot in busy:
            job = slot.job
            if job is None or job.row is None:
                continue
            token = ctx.sample(job.chain, job.row)
            self._accept(slot, job, token, now)

    def _accept(self, slot: _Slot, job: _Job, token: int, now: float) -> None:
        """Handle one sampled token: stop, emit its text, or queue it for the next decode."""
        if job.first_token_at is None:
            job.first_token_at = now
        job.last_token_at = now
        if self.model.is_eog(token):
            self._finish(job, "eosFound", slot)
            return
        job.generated += 1
        text = job.utf8.feed(self.model.piece(token))
        if job.stops is not None and text:
            text, stopped = job.stops.feed(text)
            if stopped:
                self._emit(job, text)
                self._finish(job, "stopStringFound", slot, flush=False)
                return
        self._emit(job, text)
        limit = job.request.max_tokens
        if limit is not None and job.generated >= limit:
            self._finish(job, "maxPredictedTokensReached", slot)
        elif len(slot.tokens) + 1 >= self.n_ctx_per_slot:
            self._finish(job, "contextLengthReached", slot)
        else:
            job.pending_token = token

    def _emit(self, job: _Job, text: str) -> None:
        if text:
            job.stream.publish(TextDelta(text, job.generated))

    def _finish(
        self,
        job: _Job,
        reason: StopReason,
        slot: _Slot | None,
        *,
        flush: bool = True,
        error: str | None = None,
    ) -> None:
        if flush and reason != "failed":
            tail = job.utf8.flush()
            if job.stops is not None:
                text, stopped = job.stops.feed(tail)
                tail = text if stopped else text + job.stops.flush()
            self._emit(job, tail)
        first, last = job.first_token_at, job.last_token_at
        job.stream.publish(
            Finished(
                finish_reason=_FINISH_REASONS[reason],
                stop_reason=reason,
                prompt_tokens=len(job.prompt),
                completion_tokens=job.generated,
                cached_tokens=job.cached_tokens,
                time_to_first_token=(first - job.submitted) if first is not None else None,
                generation_seconds=(last - first) if first is not None and last else 0.0,
                error=error,
                stopped_by=job.stops.stopped_by if job.stops else None,
            )
        )
        job.chain.close()
        if slot is not None:
            slot.job = None
            slot.last_used = time.perf_counter()

    def _decode_failed(self, busy: list[_Slot], status: int) -> None:
        """A decode error ends only the requests in this batch; the server keeps serving."""
        logger.error("llama_decode failed with status %d for %d sequences", status, len(busy))
        message = (
            "the KV cache is full" if status == 1 else f"llama_decode failed (status {status})"
        )
        for slot in busy:
            if slot.job is not None:
                self._finish(slot.job, "failed", slot, error=message)
            self.context.forget(slot.seq, 0)
            slot.tokens.clear()

    def _fail_everything(self, message: str) -> None:
        with self._wake:
            self._running = False
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            self._finish(job, "failed", None, error=message)
        for slot in self._slots:
            if slot.job is not None:
                self._finish(slot.job, "failed", slot, error=message)
