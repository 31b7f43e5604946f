"""The hardware self-check: one batched decode like the scheduler's, before a model serves.

Some CPUs have kernels that crash on real batches although a one-token decode works: on
Xeons that report AMX, llama.cpp repacks the weights for its AMX kernels and every decode of
two or more tokens dies with SIGSEGV (ggml-org/llama.cpp#20824).  So a worker process decodes
a few prompt tokens for several sequences at once, then one token for each, as a serving step
does, and only then says it is ready.  If it dies doing so, the parent retries without
repacking (:mod:`lmserve.models.repack`).
"""

from __future__ import annotations

import os
import signal

import numpy as np

from lmserve.engine.llama import ContextConfig, LlamaContext, LlamaModel

# Fault injection for the tests of the crash paths (a stand-in for a CPU whose kernels crash),
# read by worker processes only: a comma-separated list of faults, or "@FILE" to read the list
# from FILE each time (so a test can switch faults on and off while the server runs).
FAULTS_VARIABLE = "LMSERVE_FAULT_INJECTION"
_PROMPT = "The self-check decodes a short batch for several sequences at once."
_PROMPT_TOKENS = 8
_MAX_SEQUENCES = 4


class SelfCheckFailed(RuntimeError):
    """The decode ran but gave an error status or no usable logits."""


def injected_faults() -> set[str]:
    listed = os.environ.get(FAULTS_VARIABLE, "")
    if listed.startswith("@"):
        try:
            with open(listed[1:]) as faults:
                listed = faults.read()
        except OSError:
            listed = ""
    return {fault.strip() for fault in listed.replace("\n", ",").split(",") if fault.strip()}


def crash_if_injected(fault: str) -> None:
    """Die by SIGSEGV, as a crashing kernel would, if the tests asked for ``fault``."""
    if fault in injected_faults():
        os.kill(os.getpid(), signal.SIGSEGV)


def self_check(model: LlamaModel, serving: ContextConfig, repack: bool) -> None:
    """Decode a multi-token, multi-sequence batch, then a one-token-per-sequence step, in a
    small context of its own with the serving context's threads and batch size.

    Its own context, so that the serving context's cache starts empty.  Run it in a thread
    that ends (:func:`lmserve.engine.llama.in_passing_thread`), or every later decode is slower.
    Raises :class:`SelfCheckFailed`; a kernel that crashes takes the process down, which is
    the point.
    """
    if repack:
        crash_if_injected("selfcheck-with-repack")
    crash_if_injected("selfcheck")
    tokens = model.tokenize(_PROMPT, add_special=False)[:_PROMPT_TOKENS]
    if len(tokens) < 2:
        tokens = [max(model.bos_id, 0)] * _PROMPT_TOKENS
    sequences = max(1, min(serving.n_slots, _MAX_SEQUENCES))
    context = LlamaContext(
        model,
        ContextConfig(
            n_slots=sequences,
            n_ctx_per_slot=256,
            n_batch=serving.n_batch,
            n_threads=serving.n_threads,
            flash_attention=serving.flash_attention,
        ),
    )
    try:
        context.clear_batch()
        rows = [
            context.add(token, pos, seq, pos == len(tokens) - 1)
            for seq in range(sequences)
            for pos, token in enumerate(tokens)
        ]
        _decode(context, "a prompt batch")
        last_rows = [row for row in rows[len(tokens) - 1 :: len(tokens)]]
        next_tokens = [_finite_argmax(context, row) for row in last_rows]
        context.clear_batch()
        for seq, token in enumerate(next_tokens):
            context.add(token, len(tokens), seq, True)
        _decode(context, "a generation step")
        for row in range(sequences):
            _finite_argmax(context, row)
    finally:
        context.close()


def _decode(context: LlamaContext, what: str) -> None:
    status = context.decode()
    if status != 0:
        raise SelfCheckFailed(f"llama_decode of {what} failed (status {status})")


def _finite_argmax(context: LlamaContext, row: int) -> int:
    logits = context.logits(row)
    if not np.isfinite(logits).all():
        raise SelfCheckFailed("the decode gave logits that are not finite numbers")
    return int(np.argmax(logits))
