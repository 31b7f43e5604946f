"""Logit bias and repetition penalties, applied to the few tokens they touch, give exactly
what llama.cpp's own logit-bias and penalties samplers give over the whole vocabulary."""

from __future__ import annotations

import ctypes

import llama_cpp as C
import numpy as np
import pytest

from lmserve.engine.sampling import _Adjustments, _Candidates
from lmserve.engine.types import SamplingParams

N_VOCAB = 4096


def llama_cpps(params: SamplingParams, history: list[int], logits: np.ndarray) -> np.ndarray:
    """The logits after llama.cpp's logit-bias then penalties samplers (its chain order)."""
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    try:
        if params.logit_bias:
            biases = (C.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias):
                biases[i].token = token
                biases[i].bias = float("-inf") if bias <= -100 else bias
            C.llama_sampler_chain_add(
                chain, C.llama_sampler_init_logit_bias(N_VOCAB, len(biases), biases)
            )
        C.llama_sampler_chain_add(
            chain,
            C.llama_sampler_init_penalties(
                N_VOCAB,
                params.repeat_last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
        for token in history:
            C.llama_sampler_accept(chain, token)
        candidates = _Candidates(N_VOCAB)
        candidates.fill(logits)
        candidates.apply(chain)
        return candidates._data["logit"].copy()
    finally:
        C.llama_sampler_free(chain)


@pytest.mark.parametrize(
    "settings",
    [
        {"repeat_penalty": 1.1},
        {"repeat_penalty": 1.3, "frequency_penalty": 0.7, "presence_penalty": -0.4},
        {"repeat_penalty": 1.0, "presence_penalty": 1.5, "repeat_last_n": 16},
        {"repeat_penalty": 0.8, "logit_bias": ((7, 3.5), (11, -100.0), (3000, -2.25))},
        {"repeat_penalty": 1.0, "logit_bias": ((5, 100.0),)},
        # The API allows any repeat_penalty above 0; this one is 0 in float32, and a seen
        # token's positive logit becomes +inf, as C's division by zero makes it.
        {"repeat_penalty": 1e-50, "frequency_penalty": 0.25},
    ],
)
def test_bias_and_penalties_match_llama_cpps_samplers(settings: dict[str, object]) -> None:
    rng = np.random.default_rng(sum(map(ord, repr(settings))))
    params = SamplingParams(**settings)  # type: ignore[arg-type]
    # Small ids repeat often, so tokens are counted several times; some leave the window.
    history = [int(t) for t in rng.integers(0, 40, size=150)] + [7, 11, 3000]
    logits = (rng.standard_normal(N_VOCAB) * 4).astype(np.float32)
    adjustments = _Adjustments(params)
    prompt, generated = history[:100], history[100:]
    adjustments.remember(prompt)
    for token in generated:
        adjustments.accept(token)
    ours = logits.copy()
    row = ours.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # as llama.cpp's logits come
    adjustments.apply(row)
    theirs = llama_cpps(params, prompt[-params.repeat_last_n :] + generated, logits)
    assert np.array_equal(ours, theirs)  # bit for bit, -inf included
    assert not np.array_equal(ours, logits)
    adjustments.restore(row)
    assert np.array_equal(ours, logits)  # the model's own values, for log-probabilities


def test_nothing_to_adjust_leaves_the_chain_alone() -> None:
    assert not _Adjustments(SamplingParams(repeat_penalty=1.0)).active
    assert _Adjustments(SamplingParams(repeat_penalty=1.0, logit_bias=((1, 1.0),))).active
