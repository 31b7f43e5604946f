"""Reranking: a reranker model's score of each query/document pair, as llama.cpp computes it.

A reranker is a GGUF whose pooling type is rank: llama.cpp pools each sequence into the
model's classifier head (BERT-style ``cls`` heads; Qwen3-Reranker's ``cls.output`` rows for
"yes" and "no", softmaxed), and the score is the first value it gives, as llama-server reports
it.  A pair is formatted as llama-server formats it (``format_prompt_rerank``): the model's
``rerank`` template with ``{query}`` and ``{document}`` put in, else BOS, the query, EOS and/or
SEP, the document and EOS as the vocabulary asks for them.

The context is separate from the model's generation context (only one built for embeddings
pools) and made on first use.  Several pairs share a decode, each its own sequence, all in one
micro-batch: a model without causal attention (BERT) needs a whole sequence in one.
"""

from __future__ import annotations

import threading

import llama_cpp as C
import numpy as np

from lmserve.engine.llama import LlamaModel, ModelLoadError, default_threads
from lmserve.engine.types import RerankInputError

RANK_POOLING = C.LLAMA_POOLING_TYPE_RANK
_MAX_PAIRS_PER_DECODE = 8


class Reranker:
    """Scores pairs with ``model``'s classifier head; thread-safe (one decode at a time)."""

    def __init__(self, model: LlamaModel, n_ctx: int, threads: int = 0) -> None:
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_ctx  # a decode's pairs all in one micro-batch
        params.n_seq_max = _MAX_PAIRS_PER_DECODE
        params.kv_unified = True  # the pairs of a decode share the n_ctx cells
        params.embeddings = True
        params.pooling_type = RANK_POOLING
        params.n_threads = params.n_threads_batch = threads or default_threads()
        params.no_perf = True
        ctx = C.llama_init_from_model(model.handle, params)
        if not ctx:
            raise ModelLoadError("llama.cpp could not create a reranking context")
        self._ctx = ctx
        self._model = model
        self._memory = C.llama_get_memory(ctx)
        self._batch = C.llama_batch_init(n_ctx, 0, 1)
        self._encoder = bool(C.llama_model_has_encoder(model.handle))
        self._outputs = max(1, int(C.llama_model_n_cls_out(model.handle)))
        template = C.llama_model_chat_template(model.handle, b"rerank")
        self._template = template.decode("utf-8") if template else None
        self._lock = threading.Lock()
        self.n_ctx = n_ctx

    def pair_tokens(self, query: str, document: str) -> list[int]:
        """The tokens of one pair, as llama-server's ``format_prompt_rerank`` makes them."""
        model, vocab = self._model, self._model.vocab
        if self._template is not None:
            prompt = self._template.replace("{query}", query).replace("{document}", document)
            return model.tokenize(prompt, add_special=False, parse_special=True)
        query_tokens = model.tokenize(query, add_special=False, parse_special=False)
        document_tokens = model.tokenize(document, add_special=False, parse_special=False)
        eos = C.llama_vocab_eos(vocab)
        if eos == C.LLAMA_TOKEN_NULL:
            eos = C.llama_vocab_sep(vocab)
        add_eos = C.llama_vocab_get_add_eos(vocab)
        tokens = [C.llama_vocab_bos(vocab)] if C.llama_vocab_get_add_bos(vocab) else []
        tokens += query_tokens
        if add_eos:
            tokens.append(eos)
        if C.llama_vocab_get_add_sep(vocab):
            tokens.append(C.llama_vocab_sep(vocab))
        tokens += document_tokens
        if add_eos:
            tokens.append(eos)
        return tokens

    def score(self, query: str, documents: list[str]) -> list[tuple[float, int]]:
        """Each document's score and its pair's token count, in the documents' order;
        :class:`RerankInputError` for the first pair that does not fit."""
        pairs = [self.pair_tokens(query, document) for document in documents]
        for index, tokens in enumerate(pairs):
            if not tokens or len(tokens) > self.n_ctx:
                raise RerankInputError(index, len(tokens), self.n_ctx)
        scores: list[float] = [0.0] * len(pairs)
        start = 0
        while start < len(pairs):
            group, used = [start], len(pairs[start])
            while (
                start + len(group) < len(pairs)
                and len(group) < _MAX_PAIRS_PER_DECODE
                and used + len(pairs[start + len(group)]) <= self.n_ctx
            ):
                used += len(pairs[start + len(group)])
                group.append(start + len(group))
            for index, value in zip(group, self._decode([pairs[i] for i in group]), strict=True):
                scores[index] = value
            start += len(group)
        return [(score, len(tokens)) for score, tokens in zip(scores, pairs, strict=True)]

    def _decode(self, pairs: list[list[int]]) -> list[float]:
        with self._lock:
            C.llama_memory_clear(self._memory, True)
            batch, row = self._batch, 0
            for seq, tokens in enumerate(pairs):
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
                raise RuntimeError(f"llama.cpp failed to score the pairs (status {status})")
            values = []
            for seq in range(len(pairs)):
                pointer = C.llama_get_embeddings_seq(self._ctx, seq)
                head = np.ctypeslib.as_array(pointer, shape=(self._outputs,))
                values.append(float(head[0]))
            return values

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                C.llama_batch_free(self._batch)
                C.llama_free(self._ctx)
                self._ctx = None
