"""The prefix cache: a new request starts from the longest prefix of its prompt already
computed: in its own slot's KV stream, in the prompt cache beyond the slots (restored into
its slot), or, copied over, in another slot's stream.
"""

from __future__ import annotations

from lmserve.engine.llama import LlamaContext
from lmserve.engine.prompt_cache.cache import PromptCache
from lmserve.engine.slots import Slot
from lmserve.engine.stats import EngineStats
from lmserve.engine.tokens import common_prefix_length

# Copying another slot's KV stream costs about as much as computing 3 tokens (measured: 9 ms
# for a 4096-cell stream vs 3 ms a token); below this gain, compute instead.
_MIN_COPY_GAIN = 8
# A new request waits a step for an earlier one to compute a shared prefix it can then copy,
# rather than computing the same tokens alongside it, when the prefix is at least this long.
_MIN_WAIT_GAIN = 8
# A restore copies every cell of the prefix (about 1/300 of the time computing them takes,
# default model, 2 cores), the slot's own cells cost nothing: restore when it saves at least
# this many tokens, and a 256th of what the slot already holds.
_MIN_RESTORE_GAIN = 8
# A cached prefix is used when it is more than this part of the prompt (llama-server's
# --slot-prompt-similarity).  A shorter one (a chat template's first tokens, a BOS) is read
# again: it saves little, and llama.cpp's arithmetic depends on where a prompt's batches
# begin, so reusing it would make a new prompt's answer depend on what its slot held before.
_SIMILAR_SHARE = 0.1


def worth_reusing(length: int, prompt: list[int]) -> bool:
    return length > _SIMILAR_SHARE * len(prompt)


def least_worth(prompt: list[int]) -> int:
    """The shortest prefix of ``prompt`` worth reusing."""
    return int(_SIMILAR_SHARE * len(prompt)) + 1


class PrefixCache:
    """Reuse of computed prompt prefixes across the slots of one context, and beyond them
    through the prompt cache (``prompts``; ``None``: off)."""

    def __init__(
        self,
        context: LlamaContext,
        slots: list[Slot],
        stats: EngineStats,
        prompts: PromptCache | None = None,
    ) -> None:
        self.context = context
        self.slots = slots
        self.stats = stats
        self.prompts = prompts

    def best_free_slot(self, free: list[Slot], prompt: list[int]) -> Slot:
        """The free slot whose cache shares most with ``prompt``, if that is a real part of
        it; else the least recently used one (an empty one first).

        As llama-server's ``--slot-prompt-similarity`` (0.1): a few tokens of a chat
        template's header in common are no reason to overwrite another conversation's slot,
        which its next turn would then have to restore or read again.
        """
        best = max(free, key=lambda s: (common_prefix_length(s.tokens, prompt), -s.last_used))
        if worth_reusing(common_prefix_length(best.tokens, prompt), prompt):
            return best
        return min(free, key=lambda s: s.last_used)

    def admit(self, slot: Slot) -> None:
        """Start ``slot``'s new request from the longest prefix of its prompt that its own
        stream or the prompt cache holds, if that is a real part of the prompt."""
        sequence = slot.sequence
        assert sequence is not None
        slot.prompt_window = None
        prompt = sequence.prompt
        limit = len(prompt) - 1  # the last prompt token must be decoded
        own = sequence.resumable(min(common_prefix_length(slot.tokens, prompt), limit))
        if not worth_reusing(own, prompt) or not self._can_resume_at(slot, own):
            own = 0
        if self.prompts is not None:
            at_least = max(own + max(_MIN_RESTORE_GAIN, own // 256), least_worth(prompt))
            restored = self.prompts.restore(
                slot.seq,
                prompt,
                limit,
                at_least,
                boundary=sequence.resumable if sequence.images else None,
            )
            if restored is not None:
                slot.tokens = list(prompt[: restored.length])
                slot.window_floor = restored.window_floor
                sequence.next_prompt_index = restored.length
                self.stats.reused_prompt_tokens += restored.length
                self.stats.restored_prompt_tokens += restored.length
                sequence.cached_tokens = restored.length
                sequence.restored_from_memory = restored.memory
                sequence.restored_from_disk = restored.disk
                return
        self.reuse(slot, slot, own)

    def _can_resume_at(self, slot: Slot, length: int) -> bool:
        """Whether ``slot``'s stream, cut to ``length`` positions, holds every real cell that
        decoding position ``length`` attends to."""
        return length == 0 or slot.window_floor <= self.context.window_start(length)

    def prompt_read(self, slot: Slot) -> None:
        """``slot``'s request has just read its whole prompt: note its sliding-window cells,
        which its answer will move on, for the prompt cache."""
        if self.prompts is not None:
            slot.prompt_window = self.prompts.window(slot.seq, len(slot.tokens))

    def remember(self, slot: Slot) -> None:
        """Keep what ``slot`` holds in the prompt cache, before another request reuses it."""
        if self.prompts is not None and slot.tokens:
            self.prompts.save(slot.seq, slot.tokens, slot.prompt_window)
        slot.prompt_window = None

    def reuse(self, slot: Slot, source: Slot, length: int) -> None:
        """Make ``slot`` hold the first ``length`` prompt tokens, from ``source``'s cache."""
        sequence = slot.sequence
        assert sequence is not None
        # The last prompt token must be decoded; an image is decoded whole.
        length = sequence.resumable(min(length, len(sequence.prompt) - 1))
        ctx = self.context
        if source is not slot:
            self.stats.stream_copies += 1
            ctx.copy_stream(source.seq, slot.seq)  # the whole stream; cut to length below
            slot.tokens = list(source.tokens)
            slot.window_floor = source.window_floor
            sequence.restored_from_memory = sequence.restored_from_disk = 0
        if length < len(slot.tokens) and (
            not self._can_resume_at(slot, length) or not ctx.forget(slot.seq, length)
        ):
            # Some caches cannot drop a tail (recurrent), or lack cells the window of the
            # shorter prefix needs (sliding-window, after a restore): start over.
            ctx.forget(slot.seq, 0)
            length = 0
        if length == 0:
            slot.window_floor = 0
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
                    shared = sequence.resumable(common_prefix_length(other.tokens, sequence.prompt))
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
            prompt = sequence.prompt
            upcoming = sequence.resumable(min(upcoming, len(prompt) - 1))
            if upcoming >= max(best, have) + _MIN_WAIT_GAIN and worth_reusing(upcoming, prompt):
                waiting.add(slot.seq)
            elif best >= have + _MIN_COPY_GAIN and worth_reusing(best, prompt):
                self.reuse(slot, source, best)
        return waiting
