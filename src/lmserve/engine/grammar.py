"""Structured output, enforced while sampling: llguidance's matcher over the model's vocabulary.

A request's grammar (``SamplingParams.grammar``) is an llguidance grammar, made and checked in
the API layer (:mod:`lmserve.api.common.structured`: from a JSON schema, a client's GBNF, or
the tool-call grammar).  Each sequence that has one gets a :class:`Constraint`: whether a
token keeps the output a prefix of something the grammar accepts, the mask of every token
that does, and the tokens picked so far.  llguidance computes a mask in tens to a few hundred
microseconds (SmolLM2's 49,152 tokens) and checks one token in a few; llama.cpp's own grammar
sampler took milliseconds to mask.

llguidance needs the vocabulary as byte strings: :func:`tokenizer` builds it once per model
(about half a second for 49,152 tokens), at the first request with a grammar.
"""

from __future__ import annotations

import ctypes
import threading
import weakref

import llama_cpp as C
import llguidance
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from lmserve.engine.llama import LlamaModel
from lmserve.engine.types import GrammarError

_tokenizers: weakref.WeakKeyDictionary[LlamaModel, llguidance.LLTokenizer] = (
    weakref.WeakKeyDictionary()
)
_tokenizers_lock = threading.Lock()


def _token_bytes(model: LlamaModel) -> list[bytes]:
    """Each token's bytes as llguidance reads them: a special token's text behind 0xFF, so
    that text in a document never stands for it (as llguidance's own llama.cpp reader does,
    without its deprecated calls)."""
    vocab, buffer = model.vocab, ctypes.create_string_buffer(1024)
    special = C.LLAMA_TOKEN_ATTR_CONTROL
    tokens = []
    for token in range(model.n_vocab):
        size = C.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
        piece = buffer.raw[: max(size, 0)]
        attributes = C.llama_vocab_get_attr(vocab, token)
        looks_special = piece.startswith(b"<") and piece.endswith(b">")
        if attributes & special or (attributes & C.LLAMA_TOKEN_ATTR_USER_DEFINED and looks_special):
            piece = b"\xff" + piece
        tokens.append(piece)
    return tokens


def tokenizer(model: LlamaModel) -> llguidance.LLTokenizer:
    """llguidance's view of ``model``'s vocabulary; every end-of-generation token may end an
    output the grammar accepts."""
    with _tokenizers_lock:
        known = _tokenizers.get(model)
        if known is None:
            ends = [t for t in range(model.n_vocab) if C.llama_vocab_is_eog(model.vocab, t)]
            tokenize = ctypes.cast(C.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
            known = llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
                tokens=_token_bytes(model),
                vocab_ptr=model.vocab,
                tokenize_fptr=tokenize,
                eos_token=ends or model.eos_id,
                slices=None,
            )
            _tokenizers[model] = known
        return known


class Constraint:
    """One sequence's grammar: what it allows next, and the tokens it has followed."""

    def __init__(self, model: LlamaModel, grammar: str) -> None:
        """:class:`GrammarError` if llguidance cannot build the grammar for this model."""
        self._matcher = llguidance.LLMatcher(tokenizer(model), grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(self._matcher.get_error())
        self._n_vocab = model.n_vocab
        self._bitmask = allocate_token_bitmask(1, tokenizer(model).vocab_size)

    def allows(self, token: int) -> bool:
        """Whether ``token`` may come next (a check of one token: microseconds)."""
        return self._matcher.validate_tokens([token]) == 1

    def allowed(self) -> np.ndarray:
        """A boolean mask over the vocabulary of the tokens that may come next."""
        fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")
        return bits[: self._n_vocab].astype(bool)

    def accept(self, token: int) -> None:
        """Follow ``token``, which :meth:`allows` or :meth:`allowed` let through."""
        if not self._matcher.consume_token(token):
            raise GrammarError(self._matcher.get_error() or f"token {token} broke the grammar")
