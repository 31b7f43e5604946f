"""Choosing each next token: llama.cpp's C samplers, a grammar (llguidance), and
log-probabilities.

Nothing here loops over the vocabulary in Python: the samplers are C code, and the few
whole-vocabulary steps (copying logits into a candidate array, log-softmax) are numpy.
"""

from __future__ import annotations

import ctypes
import random
from collections import deque
from dataclasses import dataclass
from typing import TypeAlias

import llama_cpp as C
import numpy as np

from lmserve.engine.grammar import Constraint
from lmserve.engine.llama import LlamaContext, LlamaModel
from lmserve.engine.types import SamplingParams, TokenLogprob

_INF = float("inf")

_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"; never pass it on
# A row of llama.cpp's logits, indexed in place.
FloatPointer: TypeAlias = "ctypes._Pointer[ctypes.c_float]"
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


def resolve_seed(seed: int | None) -> int:
    """A 32-bit seed for llama.cpp; ``None`` or -1 draws a random one."""
    if seed is None or seed == -1:
        return random.getrandbits(31)
    seed &= 0xFFFFFFFF
    return seed - 1 if seed == _DEFAULT_SEED else seed


class _Candidates:
    """A reusable ``llama_token_data_array`` over the whole vocabulary, filled from logits."""

    def __init__(self, n_vocab: int) -> None:
        assert _TOKEN_DATA.itemsize == ctypes.sizeof(C.llama_token_data)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.array = C.llama_token_data_array(
            data=self._data.ctypes.data_as(C.llama_token_data_p),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )

    def fill(self, logits: np.ndarray) -> None:
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        self.array.size = len(self._ids)
        self.array.selected = -1
        self.array.sorted = False

    def apply(self, sampler: C.llama_sampler_p) -> None:
        C.llama_sampler_apply(sampler, ctypes.byref(self.array))

    def forbid_all_but(self, allowed: np.ndarray) -> None:
        """Rule out every token ``allowed`` (a mask over the vocabulary) does not hold."""
        self._data["logit"][~allowed] = -_INF

    @property
    def selected(self) -> int:
        return int(self._data["id"][self.array.selected])


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32, as a Python float."""
    return float(np.float32(value))


class _Adjustments:
    """Logit bias and repetition penalties, applied in place to the few tokens they concern.

    llama.cpp's penalties sampler visits every candidate (a hash lookup per token: 49,152 a
    step, about 0.17 ms here) to change at most a few dozen logits.  These do the same
    arithmetic, in the same order and rounded to float32 at the same points, on just those
    tokens of the decode's logits, and :meth:`restore` puts the model's own values back after
    sampling, so that log-probabilities still see them.

    It is a plain loop over a ctypes pointer, not numpy: right after a decode has streamed the
    weights through the caches, the dozen numpy calls this took cost 0.17 ms for one sequence
    and 0.55 ms for eight, the loop 0.07 and 0.28 (measured here, 64 penalised tokens).
    Storing into the float32 buffer rounds each operation's double result, which for one +,
    * or / is the correctly rounded float32, so the results stay bit for bit llama.cpp's.
    """

    def __init__(self, params: SamplingParams) -> None:
        # OpenAI: -100 bans the token; make the ban absolute, not merely unlikely.
        self._bias = [
            (token, float("-inf") if bias <= -100 else _float32(bias))
            for token, bias in params.logit_bias
        ]
        penalised = params.penalised and params.repeat_last_n > 0
        self._window: deque[int] = deque(maxlen=params.repeat_last_n if penalised else 0)
        self._counts: dict[int, int] = {}
        self._repeat = _float32(params.repeat_penalty)
        self._frequency = _float32(params.frequency_penalty)
        self._presence = _float32(params.presence_penalty)
        self._deductions: dict[int, float] = {}  # count -> frequency and presence penalty
        self._saved: list[tuple[int, float]] = []

    @property
    def active(self) -> bool:
        return bool(self._bias) or self._window.maxlen != 0

    def remember(self, tokens: list[int]) -> None:
        """Count context tokens (the prompt) as already seen."""
        for token in tokens[-self._window.maxlen :] if self._window.maxlen else ():
            self.accept(token)

    def accept(self, token: int) -> None:
        """Count ``token`` as seen, forgetting the oldest beyond the window."""
        window = self._window
        if window.maxlen == 0:
            return
        if len(window) == window.maxlen:
            oldest = window[0]
            left = self._counts[oldest] - 1
            if left:
                self._counts[oldest] = left
            else:
                del self._counts[oldest]
        window.append(token)
        self._counts[token] = self._counts.get(token, 0) + 1

    def _deduction(self, count: int) -> float:
        # llama.cpp: count * frequency + presence, in float32.
        deduction = self._deductions.get(count)
        if deduction is None:
            deduction = _float32(_float32(count * self._frequency) + self._presence)
            self._deductions[count] = deduction
        return deduction

    def apply(self, logits: FloatPointer) -> None:
        """Bias, then penalise, ``logits`` in place (llama.cpp's chain order)."""
        saved = self._saved = []
        for token, bias in self._bias:
            value = logits[token]
            saved.append((token, value))
            logits[token] = value + bias
        repeat = self._repeat
        deducts = self._frequency != 0.0 or self._presence != 0.0
        for token, count in self._counts.items():
            value = logits[token]
            saved.append((token, value))
            if value <= 0:
                logits[token] = value * repeat
            else:
                # A penalty that is 0 in float32 (the API allows any above 0): C's x / 0 is
                # +inf for x > 0 and NaN for NaN, which is x * inf; Python's would raise.
                logits[token] = value / repeat if repeat else value * _INF
            if deducts:
                logits[token] = logits[token] - self._deduction(count)

    def restore(self, logits: FloatPointer) -> None:
        # Backwards: a token both biased and penalised gets its first-saved, original value.
        for token, value in reversed(self._saved):
            logits[token] = value
        self._saved = []


class SamplerChain:
    """A chain of llama.cpp's C samplers built from :class:`SamplingParams`.

    The order is llama.cpp's default: bias, penalties (both :class:`_Adjustments`), top-k,
    top-p, min-p, temperature, draw.
    A grammar, if any (a :class:`Constraint`), is checked against the token the chain picks,
    and only when it refuses that token are the tokens it allows computed and the token drawn
    again among them: checking one token costs microseconds, the whole vocabulary up to a few
    hundred.  (llama.cpp's own sampler helper does the same with its grammar sampler.)
    """

    def __init__(self, model: LlamaModel, params: SamplingParams, seed: int) -> None:
        """:class:`GrammarError` if the grammar cannot be built for this model."""
        self._constraint: Constraint | None = None
        self._candidates: _Candidates | None = None
        if params.grammar:
            self._constraint = Constraint(model, params.grammar)
            self._candidates = _Candidates(model.n_vocab)
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        self.handle = chain
        self._adjustments = _Adjustments(params)
        if params.greedy:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_min_p(params.min_p, 1))
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_temp(params.temperature))
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_dist(seed))

    def remember(self, tokens: list[int]) -> None:
        """Feed context tokens (the prompt) to the penalties so they count as already seen."""
        self._adjustments.remember(tokens)

    def sample(self, context: LlamaContext, row: int) -> int:
        """Pick and accept the next token from row ``row`` of the last decode's logits."""
        adjustments = self._adjustments
        if not adjustments.active:
            return self._pick(context, row)
        logits = C.llama_get_logits_ith(context.handle, row)
        adjustments.apply(logits)
        try:
            token = self._pick(context, row)
        finally:
            adjustments.restore(logits)
        adjustments.accept(token)
        return token

    def _pick(self, context: LlamaContext, row: int) -> int:
        constraint, candidates = self._constraint, self._candidates
        if constraint is None or candidates is None:
            return C.llama_sampler_sample(self.handle, context.handle, row)
        logits = context.logits(row)
        candidates.fill(logits)
        candidates.apply(self.handle)
        token = candidates.selected
        if not constraint.allows(token):
            candidates.fill(logits)
            candidates.forbid_all_but(constraint.allowed())
            candidates.apply(self.handle)
            token = candidates.selected
        C.llama_sampler_accept(self.handle, token)
        constraint.accept(token)
        return token

    def close(self) -> None:
        if self.handle:
            C.llama_sampler_free(self.handle)
            self.handle = None


@dataclass(frozen=True)
class Distribution:
    """Log-probabilities of one row of logits: the model's own, before any sampler."""

    log_normalizer: float
    top_ids: np.ndarray
    top_logprobs: np.ndarray


def distribution(logits: np.ndarray, top: int) -> Distribution:
    """log-softmax statistics of ``logits`` and its ``top`` most likely tokens."""
    peak = float(logits.max())
    normalizer = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
    if top > 0:
        ids = np.argpartition(logits, -top)[-top:]
        ids = ids[np.argsort(logits[ids])[::-1]]
    else:
        ids = np.empty(0, dtype=np.int64)
    return Distribution(normalizer, ids, logits[ids].astype(np.float64) - normalizer)


def token_logprob(model: LlamaModel, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    dist = distribution(logits, top)
    return TokenLogprob(
        token=token,
        piece=model.piece(token),
        logprob=float(logits[token]) - dist.log_normalizer,
        top=tuple(
            (int(tid), model.piece(int(tid)), float(lp))
            for tid, lp in zip(dist.top_ids, dist.top_logprobs, strict=True)
        ),
    )
