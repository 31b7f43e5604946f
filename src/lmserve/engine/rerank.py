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

import llama_cpp as C

from lmserve.engine.embeddings import PooledContext
from lmserve.engine.llama import LlamaModel
from lmserve.engine.types import RerankInputError

_MAX_PAIRS_PER_DECODE = 8


class Reranker(PooledContext):
    """Scores pairs with ``model``'s classifier head; thread-safe (one decode at a time)."""

    def __init__(self, model: LlamaModel, n_ctx: int, threads: int = 0) -> None:
        super().__init__(
            model, n_ctx, C.LLAMA_POOLING_TYPE_RANK, n_seq=_MAX_PAIRS_PER_DECODE, threads=threads
        )
        self._outputs = max(1, int(C.llama_model_n_cls_out(model.handle)))
        template = C.llama_model_chat_template(model.handle, b"rerank")
        self._template = template.decode("utf-8") if template else None

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
            heads = self.pooled([pairs[i] for i in group], self._outputs)
            for index, head in zip(group, heads, strict=True):
                scores[index] = float(head[0])
            start += len(group)
        return [(score, len(tokens)) for score, tokens in zip(scores, pairs, strict=True)]
