"""Continuous batching: many requests share one llama.cpp context, one decode call per step.

One thread owns the context.  Each step it

1. admits waiting requests into free slots (a slot is a sequence id with its own KV stream);
2. lets each new request reuse the longest prefix of its prompt already in the cache, its own
   slot's or, copied over, another slot's;
3. packs one batch: the last sampled token of every generating sequence, then chunks of the
   prompts still being read, each token tagged with its sequence id
   (:func:`lmserve.engine.slots.plan_batch`);
4. calls ``llama_decode`` once;
5. samples every sequence from its own row of logits with its own C sampler chain.

Requests join and leave between steps, so nobody waits for another request to finish.  A
cancelled request leaves at the next step and its slot is free again.

Each slot has a KV stream of its own (llama.cpp's non-unified cache).  A shared stream would
let sequences share prefix cells for free, but its attention sums over the cells of every
sequence, so a greedy output would depend on what else is running; with separate streams the
output of a request is the same, token for token, alone or among others.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from lmserve.engine.draft import DraftModel
from lmserve.engine.drafting import choose_drafts
from lmserve.engine.llama import LlamaContext, LlamaModel
from lmserve.engine.prefix_cache import PrefixCache
from lmserve.engine.prompt_cache.cache import PromptCache
from lmserve.engine.sampling import resolve_seed, token_logprob
from lmserve.engine.sequence import Sequence
from lmserve.engine.slots import Slot, plan_batch, undo_batch
from lmserve.engine.speculative import DraftPolicy, SpeculativeMode
from lmserve.engine.stats import EngineStats
from lmserve.engine.types import (
    EngineClosedError,
    GenerationRequest,
    GenerationStream,
    ImageError,
    Outbox,
    PromptProgress,
    QueueFullError,
    RequestHandle,
    StopReason,
    TokenLogprob,
)
from lmserve.engine.vision import Projector

logger = logging.getLogger("lmserve.engine")


class StepOutbox(Protocol):
    """Where a step's events go: :meth:`flush` is called once at the end of every step."""

    def flush(self) -> None: ...


class BatchingEngine:
    """The continuous-batching engine: it runs in a model's worker process
    (:mod:`lmserve.engine.worker`), or in process for the scheduler's own tests.

    Requests come in as :class:`RequestHandle` objects through :meth:`enqueue`; their events
    are published to the handles and ``outbox`` is flushed once per step.
    """

    def __init__(
        self,
        model: LlamaModel,
        context: LlamaContext,
        *,
        n_slots: int,
        max_queue: int = 64,
        prefill_chunk: int = 64,
        name: str = "model",
        outbox: StepOutbox | None = None,
        speculative: SpeculativeMode = "auto",
        on_internal_error: Callable[[], None] | None = None,
        prompt_cache: PromptCache | None = None,
        projector: Projector | None = None,
    ) -> None:
        """``on_internal_error`` runs on the engine thread after a bug in the loop has failed
        every request (the worker process exits there, so that the server loads the model
        again); without it the engine stays closed.  ``prompt_cache``: where the states of
        released slots are kept and restored from (the engine closes it).  ``projector``: a
        vision model's, which reads the images of prompts (the engine closes it)."""
        self.model = model
        self.context = context
        self.n_slots = n_slots
        self.n_ctx_per_slot = context.n_ctx_per_slot
        self.max_queue = max_queue
        # Prompt tokens per step while other requests are running: a prompt is read in chunks
        # so that running streams stall at most one chunk's time (about 0.2 s for 64 tokens of
        # the default model on 2 cores) and new requests get their first token in turn.
        self.prefill_chunk = prefill_chunk
        self._slots = [Slot(seq) for seq in range(n_slots)]
        self._waiting: deque[Sequence] = deque()
        self._streams = Outbox()  # events of in-process streams (submit)
        self._outbox: StepOutbox = outbox or self._streams
        self.stats = EngineStats()
        self._prefixes = PrefixCache(context, self._slots, self.stats, prompt_cache)
        self.prompt_cache = prompt_cache
        self.projector = projector
        self._released: list[Slot] = []  # to keep in the prompt cache once the step is out
        self._drafts = DraftPolicy(speculative)
        self._draft_model: DraftModel | None = None
        self._retired_drafts: list[DraftModel | None] = []  # freed between steps
        self._wake = threading.Condition()
        self._running = True
        self._closing_reason = "the engine stopped after an internal error"
        self._on_internal_error = on_internal_error
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # -- the submitting side -------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Queue ``request`` from an event loop in this process; iterate the stream it gives."""
        stream = GenerationStream(request, asyncio.get_running_loop(), self._streams)
        self.enqueue(stream)
        return stream

    def enqueue(self, handle: RequestHandle) -> None:
        """Queue a request; raises :class:`QueueFullError` or :class:`EngineClosedError`
        (and :class:`GrammarError` for a grammar llama.cpp cannot parse)."""
        sequence = Sequence.create(self.model, handle, resolve_seed(handle.request.sampling.seed))
        request = handle.request
        if request.images and self.projector is None:
            sequence.chain.close()
            raise ImageError("this model has no projector: it does not take images")
        sequence.drafting = self._drafts.start(
            sequence.prompt,
            request.speculative,
            # A draft model would read an image's placeholders as tokens.
            None if request.images else request.draft_model,
        )
        with self._wake:
            if not self._running:
                sequence.chain.close()
                raise EngineClosedError("the engine is shutting down")
            free = sum(1 for slot in self._slots if slot.sequence is None)
            if len(self._waiting) >= self.max_queue + free:
                sequence.chain.close()
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(sequence)
            self._wake.notify()

    def slots(self) -> list[dict[str, object]]:
        """A snapshot of the slots, for stats; read without locking (values may be a step old)."""
        snapshot = []
        for slot in self._slots:
            sequence = slot.sequence
            snapshot.append(
                {
                    "id": slot.seq,
                    "busy": sequence is not None,
                    "request": sequence.request.number if sequence else None,
                    "prompt_tokens": len(sequence.prompt) if sequence else None,
                    # Of those, read so far (reused from the cache included).
                    "prompt_processed": sequence.next_prompt_index if sequence else None,
                    "generated_tokens": sequence.generated if sequence else None,
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
        return sum(1 for slot in self._slots if slot.sequence is not None)

    @property
    def draft_model(self) -> DraftModel | None:
        return self._draft_model

    def install_draft(self, draft: DraftModel | None) -> None:
        """Draft with ``draft`` from the next step on (for the requests that name it); the
        draft model it replaces is freed after the step that may be using it."""
        with self._wake:
            previous, self._draft_model = self._draft_model, draft
            self._retired_drafts.append(previous)

    def close(self, reason: str = "the server is shutting down") -> None:
        """Stop: requests still running or waiting end with an error saying ``reason``."""
        with self._wake:
            self._running = False
            self._closing_reason = reason
            self._wake.notify()
        self._thread.join()
        self.install_draft(None)
        self._free_retired_drafts()
        if self.prompt_cache is not None:
            self.prompt_cache.close()  # finishes its disk writes
        if self.projector is not None:
            self.projector.close()
        self.context.close()

    # -- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        crashed = False
        try:
            while True:
                with self._wake:
                    while self._running and not self._waiting and not self._busy():
                        self._wake.wait()
                    if not self._running:
                        break
                    self._admit()
                self._step()
                self._outbox.flush()
                self._remember_released()
                self._free_retired_drafts()
        except Exception:  # a bug here must not leave clients waiting forever
            logger.exception("engine loop crashed")
            crashed = True
        finally:
            # Closed (unload, shutdown): the requests may be tried again, unlike after a bug.
            self._fail_everything(self._closing_reason, unavailable=not crashed)
        if crashed and self._on_internal_error is not None:
            self._on_internal_error()

    def _free_retired_drafts(self) -> None:
        with self._wake:
            retired, self._retired_drafts = self._retired_drafts, []
        for draft in retired:
            if draft is not None:
                draft.close()

    def _remember_released(self) -> None:
        """Keep the states of the slots released this step in the prompt cache: after the
        step's events are out (their requests do not wait for it), before new requests may
        reuse the slots."""
        released, self._released = self._released, []
        for slot in released:
            if slot.sequence is None:
                self._prefixes.remember(slot)

    def _busy(self) -> list[Slot]:
        return [slot for slot in self._slots if slot.sequence is not None]

    def _admit(self) -> None:
        """Move waiting requests into free slots, in arrival order (lock held)."""
        while self._waiting:
            sequence = self._waiting[0]
            if sequence.stream.cancelled:
                self._waiting.popleft()
                sequence.finish("userStopped")
                continue
            free = [slot for slot in self._slots if slot.sequence is None]
            if not free:
                return
            self._waiting.popleft()
            slot = self._prefixes.best_free_slot(free, sequence.prompt)
            slot.sequence = sequence
            self._prefixes.admit(slot)

    def _step(self) -> None:
        started = time.perf_counter()
        self._step_inner()
        self.stats.step_seconds += time.perf_counter() - started

    def _step_inner(self) -> None:
        for slot in self._busy():
            if slot.sequence is not None and slot.sequence.stream.cancelled:
                self._release(slot, "userStopped")
        busy = self._busy()
        if not busy:
            return
        waiting = self._prefixes.share(busy)
        if self.projector is not None:
            self._read_image(busy, waiting)
            busy = self._busy()
            if not busy:
                return
        # Read once: a draft model installed meanwhile is used from the next step on.
        draft_model = self._draft_model
        choose_drafts(self._drafts, busy, self.context.n_batch, self.n_ctx_per_slot, draft_model)
        planned = plan_batch(
            self.context, busy, waiting, with_prompts=True, prefill_chunk=self.prefill_chunk
        )
        if not planned:
            return
        stats = self.stats
        decode_started = time.perf_counter()
        status = self.context.decode()
        if status == 1:
            # No room in the KV cache for this batch: retry with generation tokens only, so
            # prompts wait and running requests continue.
            undo_batch(self.context, planned)
            planned = plan_batch(
                self.context, busy, waiting, with_prompts=False, prefill_chunk=self.prefill_chunk
            )
            status = self.context.decode() if planned else 1
        if status != 0:
            undo_batch(self.context, planned)
            self._decode_failed([entry.slot for entry in planned] or busy, status)
            return
        sample_started = time.perf_counter()
        stats.steps += 1
        stats.batch_tokens += self.context.batch_size
        stats.decode_seconds += sample_started - decode_started
        ready = []
        prompt_tokens = 0
        for entry in planned:
            sequence = entry.slot.sequence
            if sequence is None:
                continue
            prompt_tokens += sequence.next_prompt_index - entry.prompt_index_before
            if entry.prompt_index_before < len(sequence.prompt) == sequence.next_prompt_index:
                self._prefixes.prompt_read(entry.slot)
            if sequence.row is not None:
                ready.append(entry.slot)
            elif sequence.next_prompt_index > entry.prompt_index_before:
                sequence.stream.publish(
                    PromptProgress(sequence.next_prompt_index, len(sequence.prompt))
                )
        picks = [self._sample(slot) for slot in ready]
        now = time.perf_counter()
        stats.sample_seconds += now - sample_started
        one_pass = len({len(s.sequence.draft) for s in ready if s.sequence is not None}) <= 1
        if not prompt_tokens and one_pass:
            # The cost of one pass over the weights, as generation steps pay it: a prompt
            # chunk's tokens cost less each (one long matrix product), and drafts of unequal
            # lengths split the step into several passes (see DraftPolicy.plan).
            self._drafts.cost.observe(self.context.batch_size, now - decode_started)
        for slot, tokens, logprobs in picks:
            self._accept(slot, tokens, logprobs, now)

    def _read_image(self, busy: list[Slot], waiting: set[int]) -> None:
        """Decode one image into the slot of the earliest request whose prompt has reached
        one: one per step, so that the slots beside it wait for one image at most."""
        projector = self.projector
        assert projector is not None
        for slot in sorted(busy, key=lambda s: s.sequence.submitted if s.sequence else 0.0):
            sequence = slot.sequence
            if sequence is None or slot.seq in waiting:
                continue
            image = sequence.image_at(sequence.next_prompt_index)
            if image is None:
                continue
            assert image.start == len(slot.tokens)
            started = time.perf_counter()
            try:
                projector.evaluate(self.context, image, slot.seq)
            except ImageError as exc:
                self.context.forget(slot.seq, len(slot.tokens))  # what it decoded of the image
                self._release(slot, "failed", str(exc))
                return
            stats = self.stats
            stats.images += 1
            stats.image_tokens += image.n_tokens
            stats.image_seconds += time.perf_counter() - started
            slot.tokens.extend(sequence.prompt[image.start : image.end])
            sequence.next_prompt_index = image.end
            sequence.started = True
            sequence.stream.publish(PromptProgress(image.end, len(sequence.prompt)))
            return

    def _sample(self, slot: Slot) -> tuple[Slot, list[int], list[TokenLogprob | None]]:
        """Sample a sequence's rows: its pending token's, then its draft's for as long as each
        sampled token is the drafted one (the rest were computed on a wrong guess)."""
        sequence = slot.sequence
        assert sequence is not None and sequence.row is not None
        draft, row, wanted = sequence.draft, sequence.row, sequence.request.logprobs
        tokens: list[int] = []
        logprobs: list[TokenLogprob | None] = []
        for index in range(len(draft) + 1):
            token = self.context.sample(sequence.chain, row + index)
            tokens.append(token)
            logprobs.append(
                token_logprob(self.model, self.context.logits(row + index), token, wanted)
                if wanted is not None
                else None
            )
            if index == len(draft) or token != draft[index]:
                break
        return slot, tokens, logprobs

    def _accept(
        self, slot: Slot, tokens: list[int], logprobs: list[TokenLogprob | None], now: float
    ) -> None:
        """Hand a sequence the tokens sampled for it this step, until one ends it; settle its
        draft and drop the KV cells of draft tokens that were not kept."""
        sequence = slot.sequence
        assert sequence is not None
        reason: StopReason | None = None
        taken = 0
        for token, logprob in zip(tokens, logprobs, strict=True):
            taken += 1
            reason = sequence.accept(self.model, token, now, logprob)
            if reason is None and len(sequence.prompt) + sequence.generated >= self.n_ctx_per_slot:
                reason = "contextLengthReached"  # prompt and completion fill the slot's context
            if reason is not None:
                break
        self.stats.generated_tokens += taken
        draft = sequence.draft
        if draft:
            matched = len(tokens) - 1  # every token sampled but the last was the drafted one
            accepted = min(matched, taken)
            rejected = int(taken > matched and matched < len(draft))
            assert sequence.drafting is not None
            self._drafts.settle(sequence.drafting, len(draft), accepted, rejected)
            self.stats.draft_tokens += len(draft)
            self.stats.accepted_draft_tokens += accepted
            sequence.draft = []
            if reason is None:
                keep = len(slot.tokens) - len(draft) + matched
                self.context.forget(slot.seq, keep)
                del slot.tokens[keep:]
        if reason is not None:
            self._release(slot, reason)

    def _release(
        self,
        slot: Slot,
        reason: StopReason,
        error: str | None = None,
        *,
        unavailable: bool = False,
    ) -> None:
        sequence = slot.sequence
        if sequence is not None:
            sequence.finish(reason, error, unavailable=unavailable)
            if reason != "failed":
                self._released.append(slot)
        slot.sequence = None
        slot.last_used = time.perf_counter()

    def _decode_failed(self, slots: list[Slot], status: int) -> None:
        """A decode error ends requests of this batch, not the server."""
        logger.error("llama_decode failed with status %d for %d sequences", status, len(slots))
        if status == 1:
            # Even the smallest batch does not fit: end the request with the longest context,
            # the others go on at the next step.
            victim = max(
                slots, key=lambda s: len(s.tokens) + len(s.sequence.prompt if s.sequence else [])
            )
            self._release(victim, "failed", "the KV cache is full")
            return
        for slot in slots:
            self._release(slot, "failed", f"llama_decode failed (status {status})")
            self.context.forget(slot.seq, 0)
            slot.tokens.clear()

    def _fail_everything(self, message: str, *, unavailable: bool) -> None:
        with self._wake:
            self._running = False
            waiting, self._waiting = list(self._waiting), deque()
        for sequence in waiting:
            sequence.finish("failed", message, unavailable=unavailable)
        for slot in self._slots:
            if slot.sequence is not None:
                self._release(slot, "failed", message, unavailable=unavailable)
        self._outbox.flush()
