"""A context's slots, and the batch of one engine step: what each slot adds, and undoing it.

A slot is a sequence id with its own KV stream; :class:`Slot` mirrors what that stream holds.
Each step the scheduler fills llama.cpp's batch with :func:`plan_batch` and, if the decode
fails, takes it back out with :func:`undo_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmserve.engine.llama import LlamaContext
from lmserve.engine.prompt_cache.cache import WindowCells
from lmserve.engine.sequence import Sequence


@dataclass
class Slot:
    """One sequence id of the context, and the tokens its KV stream holds."""

    seq: int
    tokens: list[int] = field(default_factory=list)  # exactly what the KV stream holds
    sequence: Sequence | None = None
    last_used: float = 0.0
    # Sliding-window layers hold real cells from this position on; below it, a restored
    # state put zeros, which the window masks (see PromptCache): the stream may be cut back
    # only to a length whose window starts here or later.
    window_floor: int = 0
    # Its sliding-window cells as they were when its request's prompt was read, for the
    # prompt cache (the answer moves the window on).
    prompt_window: WindowCells | None = None


@dataclass
class Planned:
    """What one step added to the batch for one slot, to undo it if the decode fails."""

    slot: Slot
    tokens_before: int
    prompt_index_before: int
    pending_before: int | None


def plan_batch(
    ctx: LlamaContext,
    busy: list[Slot],
    waiting: set[int],
    *,
    with_prompts: bool,
    prefill_chunk: int,
) -> list[Planned]:
    """Fill the context's batch for one step; what each slot added, to undo it on failure.

    Generating sequences first, each with its pending token and draft; then (``with_prompts``)
    chunks of the prompts still being read, in arrival order, within the step's prompt budget
    (``prefill_chunk`` while other requests run), except for the slots in ``waiting``.
    """
    ctx.clear_batch()
    planned: dict[int, Planned] = {}

    def plan(slot: Slot) -> None:
        sequence = slot.sequence
        assert sequence is not None
        if slot.seq not in planned:
            planned[slot.seq] = Planned(
                slot, len(slot.tokens), sequence.next_prompt_index, sequence.pending_token
            )

    # Generating sequences first: each adds its pending token and its draft, if it has one,
    # every one of them with logits to sample from.
    for slot in busy:
        sequence = slot.sequence
        assert sequence is not None
        sequence.row = None
        if sequence.pending_token is not None:
            plan(slot)
            position = len(slot.tokens)
            sequence.row = ctx.add(sequence.pending_token, position, slot.seq, True)
            for offset, token in enumerate(sequence.draft, 1):
                ctx.add(token, position + offset, slot.seq, True)
            slot.tokens.append(sequence.pending_token)
            slot.tokens.extend(sequence.draft)
            sequence.pending_token = None
    if not with_prompts:
        return list(planned.values())
    # Then prompt chunks in arrival order, within the step's prompt budget.
    budget = ctx.n_batch - ctx.batch_size
    if len(busy) > 1:
        budget = min(budget, prefill_chunk)
    for slot in sorted(busy, key=lambda s: s.sequence.submitted if s.sequence else 0.0):
        sequence = slot.sequence
        assert sequence is not None
        if not sequence.prefilling or budget <= 0 or slot.seq in waiting:
            continue
        start = sequence.next_prompt_index
        # Text up to the next image: an image is decoded on its own (Projector.evaluate).
        end = min(sequence.text_end(start), start + budget)
        if end <= start:
            continue
        plan(slot)
        budget -= end - start
        last = len(sequence.prompt) - 1
        for index in range(start, end):
            row = ctx.add(sequence.prompt[index], index, slot.seq, index == last)
            if index == last:
                sequence.row = row
        slot.tokens.extend(sequence.prompt[start:end])
        sequence.next_prompt_index = end
        sequence.started = True
    return list(planned.values())


def undo_batch(ctx: LlamaContext, planned: list[Planned]) -> None:
    """Take a failed batch back out of the slots and the KV cache."""
    for entry in planned:
        slot, sequence = entry.slot, entry.slot.sequence
        ctx.forget(slot.seq, entry.tokens_before)
        del slot.tokens[entry.tokens_before :]
        if sequence is not None:
            sequence.next_prompt_index = entry.prompt_index_before
            sequence.pending_token = entry.pending_before
            sequence.draft = []  # drafted again, if still worth it, at the next step
            sequence.row = None
