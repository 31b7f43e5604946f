"""Sentence embeddings: a model's pooled hidden states, L2-normalised.

An embedding context is separate from the model's generation context (llama.cpp pools only
in a context built for embeddings) and is made on first use.  Inputs are embedded one at a
time, each alone in the context, so an input's vector never depends on what else was asked.
"""

from __future__ import annotations

import threading

import llama_cpp as C
import numpy as np

from lmserve.engine.llama import LlamaModel, ModelLoadError, default_threads

# GGUF's `<arch>.pooling_type`, as llama.cpp numbers them.
POOLING_NAMES = {
    C.LLAMA_POOLING_TYPE_MEAN: "mean",
    C.LLAMA_POOLING_TYPE_CLS: "cls",
    C.LLAMA_POOLING_TYPE_LAST: "last",
}


class PooledContext:
    """A context of ``model``'s own that pools each sequence (embeddings, a reranker's head):
    every sequence of a call is decoded in one micro-batch, as a model without causal
    attention (BERT) needs; one call at a time (thread-safe)."""

    def __init__(
        self, model: LlamaModel, n_ctx: int, pooling: int, *, n_seq: int = 1, threads: int = 0
    ) -> None:
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_ctx  # a call's sequences in one micro-batch
        params.n_seq_max = n_seq
        params.kv_unified = True  # the sequences of a call share the n_ctx cells
        params.embeddings = True
        params.pooling_type = pooling
        params.n_threads = params.n_threads_batch = threads or default_threads()
        params.no_perf = True
        ctx = C.llama_init_from_model(model.handle, params)
        if not ctx:
            raise ModelLoadError("llama.cpp could not create a pooling context")
        self._ctx = ctx
        self._model = model
        self._memory = C.llama_get_memory(ctx)
        self._batch = C.llama_batch_init(n_ctx, 0, 1)
        self._encoder = bool(C.llama_model_has_encoder(model.handle))
        self._lock = threading.Lock()
        self.n_ctx = n_ctx

    def pooled(self, sequences: list[list[int]], width: int) -> list[np.ndarray]:
        """The pooled output (``width`` floats) of each sequence, decoded together from an
        empty context; their tokens fit ``n_ctx`` together."""
        with self._lock:
            C.llama_memory_clear(self._memory, True)
            batch, row = self._batch, 0
            for seq, tokens in enumerate(sequences):
                for position, token in enumerate(tokens):
                    batch.token[row] = token
                    batch.pos[row] = position
                    batch.n_seq_id[row] = 1
                    batch.seq_id[row][0] = seq
                    batch.logits[row] = True  # pooling reads every token's output
                    row += 1
            batch.n_tokens = row
            run = C.llama_encode if self._encoder else C.llama_decode
            status = run(self._ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama.cpp failed to pool the input (status {status})")
            return [
                np.ctypeslib.as_array(
                    C.llama_get_embeddings_seq(self._ctx, seq), shape=(width,)
                ).astype(np.float32)
                for seq in range(len(sequences))
            ]

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                C.llama_batch_free(self._batch)
                C.llama_free(self._ctx)
                self._ctx = None


class Embedder(PooledContext):
    def __init__(self, model: LlamaModel, n_ctx: int, threads: int = 0) -> None:
        declared = model.metadata(f"{model.architecture}.pooling_type")
        pooling = int(declared) if declared and declared.isdigit() else C.LLAMA_POOLING_TYPE_MEAN
        if pooling not in POOLING_NAMES:
            # NONE (per-token vectors) or RANK (rerankers) give no sentence embedding: the
            # chat models that declare nothing get mean pooling, as most embedders use.
            pooling = C.LLAMA_POOLING_TYPE_MEAN
        super().__init__(model, n_ctx, pooling, threads=threads)
        self.dimensions = C.llama_model_n_embd(model.handle)
        self.pooling = POOLING_NAMES[pooling]

    def embed(self, tokens: list[int]) -> np.ndarray:
        """The normalised embedding of one tokenized input (blocking: call off the loop)."""
        if not tokens or len(tokens) > self.n_ctx:
            raise ValueError(f"an input must have 1 to {self.n_ctx} tokens")
        (vector,) = self.pooled([tokens], self.dimensions)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector
