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


class Embedder:
    def __init__(self, model: LlamaModel, n_ctx: int, threads: int = 0) -> None:
        declared = model.metadata(f"{model.architecture}.pooling_type")
        pooling = int(declared) if declared and declared.isdigit() else C.LLAMA_POOLING_TYPE_MEAN
        if pooling not in POOLING_NAMES:
            # NONE (per-token vectors) or RANK (rerankers) give no sentence embedding: the
            # chat models that declare nothing get mean pooling, as most embedders use.
            pooling = C.LLAMA_POOLING_TYPE_MEAN
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx  # a whole input in one batch, as pooling needs
        params.n_ubatch = n_ctx
        params.n_seq_max = 1
        params.embeddings = True
        params.pooling_type = pooling
        params.n_threads = params.n_threads_batch = threads or default_threads()
        params.no_perf = True
        ctx = C.llama_init_from_model(model.handle, params)
        if not ctx:
            raise ModelLoadError("llama.cpp could not create an embedding context")
        self._ctx = ctx
        self._model = model
        self._memory = C.llama_get_memory(ctx)
        self._batch = C.llama_batch_init(n_ctx, 0, 1)
        self._encoder = bool(C.llama_model_has_encoder(model.handle))
        self._lock = threading.Lock()
        self.n_ctx = n_ctx
        self.dimensions = C.llama_model_n_embd(model.handle)
        self.pooling = POOLING_NAMES[pooling]

    def embed(self, tokens: list[int]) -> np.ndarray:
        """The normalised embedding of one tokenized input (blocking: call off the loop)."""
        if not tokens or len(tokens) > self.n_ctx:
            raise ValueError(f"an input must have 1 to {self.n_ctx} tokens")
        with self._lock:
            C.llama_memory_clear(self._memory, True)
            batch = self._batch
            for index, token in enumerate(tokens):
                batch.token[index] = token
                batch.pos[index] = index
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = 0
                batch.logits[index] = True
            batch.n_tokens = len(tokens)
            run = C.llama_encode if self._encoder else C.llama_decode
            status = run(self._ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama.cpp failed to embed the input (status {status})")
            pointer = C.llama_get_embeddings_seq(self._ctx, 0)
            vector = np.ctypeslib.as_array(pointer, shape=(self.dimensions,)).astype(np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                C.llama_batch_free(self._batch)
                C.llama_free(self._ctx)
                self._ctx = None
