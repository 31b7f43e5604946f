"""The prefix cache: a new request starts from the longest prefix of its prompt already
computed, in its own slot's KV stream or, copied over, in another slot's.
"""

from __future__ import annotations

from lmserve.engine.llama import LlamaContext
from lmserve.engine.slots import Slot, common_prefix_length
from lmserve.engine.stats import EngineStats

# Copying another slot's KV stream costs about as much as computing 3 tokens (measured: 9 ms
# for a 4096-cell stream vs 3 ms a token); below this gain, compute instead.
_MIN_COPY_GAIN = 8
# A new request waits a step for an earlier one to compute a shared prefix it can then copy,
# rather than computing the same tokens alongside it, when the prefix is at least this long.
_MIN_WAIT_GAIN = 8


class PrefixCache:
    """Reuse of computed prompt prefixes across the slots of one context."""

    def __init__(self, context: LlamaContext, slots: list[Slot], stats: EngineStats) -> None:
        self.context = context
        self.slots = slots
        self.stats = stats

    def best_free_slot(self, free: list[Slot], prompt: list[int]) -> Slot:
        """The free slot whose cache shares most with ``prompt``; else the least recently
        used one."""
        return max(free, key=lambda s: (common_prefix_length(s.tokens, prompt), -s.last_used))

    def admit(self, slot: Slot) -> None:
        """Start ``slot``'s new request from what its own cache shares with the prompt."""
        assert slot.sequence is not None
        self.reuse(slot, slot, common_prefix_length(slot.tokens, slot.sequence.prompt))

    def reuse(self, slot: Slot, source: Slot, length: int) -> None:
        """Make ``slot`` hold the first ``length`` prompt tokens, from ``source``'s cache."""
        sequence = slot.sequence
        assert sequence is not None
        length = min(length, len(sequence.prompt) - 1)  # the last prompt token must be decoded
        ctx = self.context
        if source is not slot:
            self.stats.stream_copies += 1
            ctx.copy_stream(source.seq, slot.seq)  # the whole stream; cut to length below
            slot.tokens = list(source.tokens)
        if length < len(slot.tokens) and not ctx.forget(slot.seq, length):
            # Some caches (recurrent, sliding-window) cannot drop a tail: start over.
            ctx.forget(slot.seq, 0)
            length = 0
        del slot.tokens[length:]
        sequence.next_prompt_index = length
        self.stats.reused_prompt_tokens += length - sequence.cached_tokens
        sequence.cached_tokens = length

    def share(self, busy: list[Slot]) -> set[int]:
        """Let new requests copy prefixes other slots hold; say which should wait a step.

        A request that has not computed any of its prompt yet may find a longer prefix in
        another slot's cache (another conversation with the same system prompt): it copies
        that slot's stream.  If an earlier request that is still reading its prompt will soon
        hold a longer shared prefix, it waits for it instead of computing the same tokens.
        """
        waiting: set[int] = set()
        by_arrival = sorted(busy, key=lambda s: s.sequence.submitted if s.sequence else 0.0)
        for index, slot in enumerate(by_arrival):
            sequence = slot.sequence
            if sequence is None or sequence.started or not sequence.prefilling:
                continue
            have = sequence.next_prompt_index
            best, source = have, slot
            for other in self.slots:
                if other is not slot:
                    shared = common_prefix_length(other.tokens, sequence.prompt)
                    if shared > best:
                        best, source = shared, other
            upcoming = max(
                (
                    common_prefix_length(earlier.sequence.prompt, sequence.prompt)
                    for earlier in by_arrival[:index]
                    if earlier.sequence is not None and earlier.sequence.prefilling
                ),
                default=0,
            )
            if min(upcoming, len(sequence.prompt) - 1) >= max(best, have) + _MIN_WAIT_GAIN:
                waiting.add(slot.seq)
            elif best >= have + _MIN_COPY_GAIN:
                self.reuse(slot, source, best)
        return waiting
