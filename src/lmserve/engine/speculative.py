"""Speculative decoding by prompt lookup: drafting tokens from the text so far, and deciding
when a draft pays.

A sequence whose last tokens also appear earlier in its prompt or output (code being edited,
a passage being quoted, JSON echoing its keys) is likely to go on as it went on there.  The
engine puts those following tokens in the step's batch after the sequence's pending token,
with logits for each, and keeps the longest run its sampler agrees with
(:mod:`lmserve.engine.scheduler`).  The draft is a fixed proposal, so sampling each row and
stopping at the first token that differs from the draft keeps the output distribution exactly
as without it: a draft token is kept with the model's probability for it, and otherwise the
token drawn instead comes from the rest of the distribution.  Greedy output is unchanged
token for token.

A verified token is not free: on a CPU a decode is bound by arithmetic, not by reading the
weights, and each extra token of a batch costs about half a single-token step (measured on
2 cores with the default model: 8.8 ms for 1 token, 13-15 ms for 2, 39-46 ms for 9).  So
:class:`DraftPolicy` fits the cost of a step against its size as it runs, estimates each
sequence's acceptance rate, and drafts only as many tokens as are expected to pay for
themselves against what the same time would produce without them, which under a full batch
is usually none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmserve.engine.types import DraftCounts

SpeculativeMode = Literal["auto", "on", "off"]
SPECULATIVE_MODES: tuple[SpeculativeMode, ...] = ("auto", "on", "off")

MAX_DRAFT = 8  # tokens; beyond this a step costs as much as the tokens it could save
_NGRAM_SIZES = (4, 3, 2)  # longest match first: a longer match predicts better
_PRIOR_WEIGHT = 4.0  # how many verified tokens the engine-wide acceptance rate counts as
_FIRST_PROBE_GAP = 16  # steps between probe drafts of a sequence whose drafts do not pay
_MAX_PROBE_GAP = 256


class PromptLookup:
    """An index of every n-gram of a token history (n in 2..4) to where it last continued.

    :meth:`draft` proposes what followed the most recent earlier occurrence of the history's
    last n tokens, the longest n that has one.
    """

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in _NGRAM_SIZES}
        self.match = 0  # the n of the last draft's match (0: none)
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        history = self.tokens
        position = len(history)
        # The n-gram just before ``position`` continues with the token at ``position``; the
        # history's own final n-gram has no continuation yet, so it never matches itself.
        for n, ends in self._ends.items():
            if position >= n:
                ends[tuple(history[position - n : position])] = position
        history.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed an earlier occurrence of the history's end."""
        history = self.tokens
        self.match = 0
        if limit <= 0:
            return []
        for n, ends in self._ends.items():
            if len(history) < n:
                continue
            start = ends.get(tuple(history[-n:]))
            if start is not None:
                self.match = n
                draft = history[start : start + limit]
                # An image's placeholders (negative) are no token to decode: stop before one.
                cut = next((i for i, token in enumerate(draft) if token < 0), len(draft))
                return draft[:cut]
        return []


@dataclass
class DraftRequest:
    """A sequence for a draft model to draft for: its slot, all it has accepted (the prompt
    and its tokens so far, the pending one last), and how many tokens to draft."""

    seq: int
    history: list[int]
    count: int


class StepCost:
    """A straight-line fit of a step's seconds against its batch size, as it runs.

    Least squares with exponential forgetting, so that it follows the machine as its speed
    drifts.  Until steps of different sizes have been seen it assumes the fixed part of a
    step equals the cost of one token, which is near what a CPU measures.
    """

    _DECAY = 0.995

    def __init__(self) -> None:
        self._n = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        d = self._DECAY
        self._n = self._n * d + 1.0
        self._x = self._x * d + tokens
        self._y = self._y * d + seconds
        self._xx = self._xx * d + tokens * tokens
        self._xy = self._xy * d + tokens * seconds

    def line(self) -> tuple[float, float]:
        """(seconds a step costs whatever its size, seconds per token of the batch)."""
        if self._n == 0:
            return 1.0, 1.0  # only the ratio matters before anything is measured
        mean_x, mean_y = self._x / self._n, self._y / self._n
        variance = self._xx / self._n - mean_x * mean_x
        if variance > 0.25:
            slope = (self._xy / self._n - mean_x * mean_y) / variance
            intercept = mean_y - slope * mean_x
            if slope > 0 and intercept > 0:
                return intercept, slope
        per_token = mean_y / (mean_x + 1.0)
        return per_token, per_token


@dataclass
class DraftState:
    """A sequence's drafting: its lookup index, counts and how its drafts have fared."""

    lookup: PromptLookup
    counts: DraftCounts
    forced: bool = False  # draft whenever there is a match (mode "on"), whatever it costs
    draft_model: str | None = None  # draft with this model, when the worker has it loaded
    # How its drafts fared, by the length of the match they came from (0: a draft model's).
    fared: dict[int, PositionCounts] = field(default_factory=dict)
    match: int = 0  # the match length of the draft now proposed
    steps_since_draft: int = 0
    probe_gap: int = _FIRST_PROBE_GAP
    probing: bool = False  # the current draft is a probe

    def settle(self, drafted: int, accepted: int, rejected: int) -> None:
        """Count the outcome of a draft of ``drafted`` tokens."""
        self.counts.add(drafted, accepted, rejected)
        self.fared.setdefault(self.match, PositionCounts()).add(accepted, rejected)
        if drafted:
            self.steps_since_draft = 0
        if self.probing:
            # Each failed probe waits twice as long for the next; a kept one starts over.
            self.probing = False
            self.probe_gap = (
                _FIRST_PROBE_GAP if accepted else min(self.probe_gap * 2, _MAX_PROBE_GAP)
            )


@dataclass
class PositionCounts:
    """By position in a draft: how often a token there was checked (those before it all
    kept), and kept.  Guesses come in runs (a copied passage), so a token whose predecessor
    was kept is likelier to be kept itself than the first of a draft."""

    checked: list[float] = field(default_factory=lambda: [0.0] * MAX_DRAFT)
    kept: list[float] = field(default_factory=lambda: [0.0] * MAX_DRAFT)

    def add(self, accepted: int, rejected: int, decay: float = 1.0) -> None:
        """Count a draft's outcome: the first ``accepted`` tokens checked and kept, the next
        one checked and rejected (if ``rejected``); older counts weigh ``decay`` as much."""
        if decay != 1.0:
            self.checked = [value * decay for value in self.checked]
            self.kept = [value * decay for value in self.kept]
        for position in range(min(accepted + rejected, MAX_DRAFT)):
            self.checked[position] += 1
            self.kept[position] += position < accepted


class DraftPolicy:
    """How many tokens to draft for a sequence in a step, from costs and acceptance rates.

    With ``a[i]`` the rate at which a draft's token ``i`` is kept given those before it
    were, a draft of ``k`` tokens yields on average ``a[0] + a[0]a[1] + ... + a[0]...a[k-1]``
    tokens beyond the one a step always gives, and adds ``k`` tokens' cost to the step.  That
    is worth it when those tokens come cheaper than the batch's own: the step's tokens per
    second without the draft, times the draft's added seconds.
    """

    def __init__(self, mode: SpeculativeMode = "auto") -> None:
        self.mode = mode
        self.cost = StepCost()
        # Engine-wide, decayed, by match length: the prior of a sequence's own rates.  A
        # draft from a 4-token match is kept far more often than one from a 2-token match
        # (a passage being copied, against words that merely recur).
        self._fared: dict[int, PositionCounts] = {}

    def start(
        self, prompt: list[int], request_mode: bool | None, draft_model: str | None = None
    ) -> DraftState | None:
        """A new sequence's drafting state, or ``None`` if it should not draft at all.

        A request that names a draft model drafts at every step, whatever the server's mode,
        as LM Studio's do (the user chose that model to draft), unless it also says
        ``speculative: false``."""
        if request_mode is False:
            return None
        if request_mode is None and self.mode == "off" and draft_model is None:
            return None
        forced = request_mode is True or (
            request_mode is None and (self.mode == "on" or draft_model is not None)
        )
        counts = DraftCounts(model=draft_model)
        return DraftState(PromptLookup(prompt), counts, forced=forced, draft_model=draft_model)

    def settle(self, state: DraftState, drafted: int, accepted: int, rejected: int) -> None:
        state.settle(drafted, accepted, rejected)
        if accepted + rejected:
            fared = self._fared.setdefault(state.match, PositionCounts())
            fared.add(accepted, rejected, decay=0.99)

    def acceptance(self, state: DraftState) -> list[float]:
        """The rate at which the tokens of ``state``'s proposed draft will be kept, by
        position in the draft, from drafts of the same match length."""
        prior = self._fared.get(state.match) or PositionCounts()
        own = state.fared.get(state.match) or PositionCounts()
        rates: list[float] = []
        previous = 0.5
        for position in range(MAX_DRAFT):
            # A position seldom checked takes after the one before it (guesses come in
            # runs), so that a sequence whose short drafts are all kept tries longer ones.
            expected = (prior.kept[position] + previous) / (prior.checked[position] + 1.0)
            previous = (own.kept[position] + _PRIOR_WEIGHT * expected) / (
                own.checked[position] + _PRIOR_WEIGHT
            )
            rates.append(previous)
        return rates

    def expected_tokens(self, state: DraftState, limit: int) -> list[float]:
        """Tokens a draft of 1, 2... ``limit`` tokens adds on average, for ``state``'s
        sequence."""
        rates = self.acceptance(state)
        curve, total, power = [], 0.0, 1.0
        for position in range(min(limit, MAX_DRAFT)):
            power *= rates[position]
            total += power
            curve.append(total)
        return curve

    def plan(
        self, candidates: list[tuple[DraftState, int]], generating: int
    ) -> tuple[int, list[int]]:
        """Which candidates draft, and how many tokens each: ``(k, indices)``.

        ``candidates``: sequences that have a draft of up to so many tokens; ``generating``:
        sequences in the step.  llama.cpp splits a step's batch so that each pass over the
        weights takes as many tokens from every sequence in it (its equal split, for separate
        KV streams), so sequences with drafts of different lengths, or drafting beside
        sequences that do not, cost a pass each, the fixed part of a step again.  So every
        drafter drafts the same ``k`` tokens, and fewer than all pay that fixed part once.
        """
        fixed, per_token = self.cost.line()
        # Tokens a second gives without drafting.
        rate = generating / (fixed + per_token * generating)
        curves = [self.expected_tokens(state, limit) for state, limit in candidates]
        best_value, best_k, best_m = 0.0, 0, 0
        for k in range(1, MAX_DRAFT + 1):
            gains = sorted((curve[k - 1] for curve in curves if len(curve) >= k), reverse=True)
            total = 0.0
            for m, gain in enumerate(gains, 1):
                total += gain
                seconds = per_token * m * k + (fixed if m < generating else 0.0)
                if total - rate * seconds > best_value:
                    best_value, best_k, best_m = total - rate * seconds, k, m
        if best_k == 0:
            return 0, []
        eligible = [i for i, curve in enumerate(curves) if len(curve) >= best_k]
        eligible.sort(key=lambda i: curves[i][best_k - 1], reverse=True)
        return best_k, eligible[:best_m]

    def draft_length(self, state: DraftState, generating: int, limit: int) -> int:
        """Tokens to draft for ``state``'s sequence, the only one with a draft among
        ``generating`` sequences; a 1-token probe now and then for a lone sequence whose
        drafts do not pay (its text may have come to a part that repeats)."""
        if limit <= 0:
            return 0
        if state.forced:
            return limit
        k, chosen = self.decide([(state, limit)], generating)
        return k if chosen else 0

    def decide(
        self, candidates: list[tuple[DraftState, int]], generating: int
    ) -> tuple[int, list[int]]:
        """:meth:`plan` for this step, counting it as a step without a draft for each
        candidate, and with a 1-token probe now and then for a lone sequence whose drafts
        do not pay (its text may have come to a part that repeats)."""
        for state, _ in candidates:
            state.steps_since_draft += 1
        k, chosen = self.plan(candidates, generating)
        if not chosen and generating == 1 and len(candidates) == 1:
            state = candidates[0][0]
            if state.steps_since_draft >= state.probe_gap:
                state.probing = True
                return 1, [0]
        return k, chosen
