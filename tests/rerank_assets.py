"""A tiny reranker GGUF, made on the spot for the rerank tests.

No real reranker is reachable where the tests run: no network, and the smallest real one
(Qwen3-Reranker-0.6B) is hundreds of megabytes. :func:`write_reranker` writes one that
llama.cpp loads and scores query/document pairs with like a real one: architecture ``qwen3``
with rank pooling (``qwen3.pooling_type`` = 4) and a two-row classifier head
(``cls.output.weight``, labels ``["yes", "no"]``), laid out as llama.cpp's
``convert_hf_to_gguf.py`` writes a Qwen3-Reranker, only small: 2 layers, width 64. llama.cpp
reads the last token of each sequence (the attention is causal) through the head and a
softmax, so a score is P(yes), in (0, 1); llama-server's ``/v1/rerank`` reports it as is. Its
weights are random (small, from the seed): the scores mean nothing, but they are finite,
deterministic and differ from one document to the next, enough to test the plumbing.

The vocabulary is byte-level BPE (``gpt2`` model, ``qwen2`` pre-tokenizer): the 256 byte
tokens of GPT-2's byte-to-unicode mapping, merges learnt from the template's words (llama.cpp
refuses a BPE vocabulary without merges, and gguf-py drops an empty list) and Qwen's three
control tokens. The prompt
is :data:`RERANK_TEMPLATE`, stored as ``tokenizer.chat_template.rerank``: llama-server puts
the query and the document in its ``{query}``/``{document}`` and tokenizes it with special
tokens parsed and no BOS added. ``gguf`` takes numpy shapes, which are ggml's reversed.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

import gguf
import numpy as np

EMBED = 64
BLOCK_COUNT = 2
HEAD_COUNT = 4
HEAD_COUNT_KV = 2
HEAD_DIM = EMBED // HEAD_COUNT
FEED_FORWARD = 128
CONTEXT = 512
LABELS = ["yes", "no"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen3-Reranker's, as llama.cpp's converter (conversion/qwen.py) writes it.
RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that "
    "answer the query\n<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode mapping: one printable character per byte, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars: list[str] = []
    extra = 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _merges() -> list[str]:
    """Byte-pair merges learnt from the template's words by BPE training (130 of them), so the
    template takes 85 tokens, not 300 bytes, and several short pairs fit in one 512-token
    batch. Words as the ``qwen2`` pre-tokenizer cuts them, roughly; a space is ``Ġ``."""
    text = RERANK_TEMPLATE.replace("{query}", "").replace("{document}", "")
    for special in SPECIAL_TOKENS:
        text = text.replace(special, "\n")
    counts = Counter(re.findall(r"[^\r\nA-Za-z0-9]?[A-Za-z]+", text))
    words = {word: [c.replace(" ", "Ġ") for c in word] for word in counts}
    merges: list[str] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, parts in words.items():
            for pair in pairwise(parts):
                pairs[pair] += counts[word]
        if not pairs:
            return merges
        (a, b), _ = pairs.most_common(1)[0]
        merges.append(f"{a} {b}")
        for parts in words.values():
            i = 0
            while i < len(parts) - 1:
                if parts[i] == a and parts[i + 1] == b:
                    parts[i : i + 2] = [a + b]
                i += 1


def write_reranker(path: Path, seed: int = 0) -> Path:
    """Write a tiny ``qwen3`` reranker to ``path`` and return ``path``.

    Norms are 1, other weights ``normal * 0.1`` (the classifier's ``normal * 0.2``) from
    ``numpy.random.default_rng(seed)``: large enough that the document, not only the prompt's
    last token, moves the score, small enough that it stays away from 0 and 1 (seed 0: 0.26 to
    0.77 for a handful of short documents).
    """
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    merges = _merges()
    tokens = list(dict.fromkeys(_byte_tokens() + [m.replace(" ", "") for m in merges]))
    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
    special = {name: len(tokens) + i for i, name in enumerate(SPECIAL_TOKENS)}
    tokens += SPECIAL_TOKENS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_name("lmserve test reranker")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(BLOCK_COUNT)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEAD_COUNT)
    writer.add_head_count_kv(HEAD_COUNT_KV)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_classifier_output_labels(LABELS)  # qwen3.classifier.output_labels
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(special["<|endoftext|>"])
    writer.add_eos_token_id(special["<|im_end|>"])
    writer.add_pad_token_id(special["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template([{"name": "rerank", "template": RERANK_TEMPLATE}])

    kv_width = HEAD_DIM * HEAD_COUNT_KV
    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": rand(len(tokens), EMBED),
        "output_norm.weight": ones(EMBED),
        "cls.output.weight": rand(len(LABELS), EMBED, scale=0.2),  # rows: yes, no
    }
    for i in range(BLOCK_COUNT):
        blk = f"blk.{i}"
        tensors[f"{blk}.attn_norm.weight"] = ones(EMBED)
        tensors[f"{blk}.attn_q.weight"] = rand(HEAD_DIM * HEAD_COUNT, EMBED)
        tensors[f"{blk}.attn_k.weight"] = rand(kv_width, EMBED)
        tensors[f"{blk}.attn_v.weight"] = rand(kv_width, EMBED)
        tensors[f"{blk}.attn_output.weight"] = rand(EMBED, HEAD_DIM * HEAD_COUNT)
        tensors[f"{blk}.attn_q_norm.weight"] = ones(HEAD_DIM)
        tensors[f"{blk}.attn_k_norm.weight"] = ones(HEAD_DIM)
        tensors[f"{blk}.ffn_norm.weight"] = ones(EMBED)
        tensors[f"{blk}.ffn_gate.weight"] = rand(FEED_FORWARD, EMBED)
        tensors[f"{blk}.ffn_up.weight"] = rand(FEED_FORWARD, EMBED)
        tensors[f"{blk}.ffn_down.weight"] = rand(EMBED, FEED_FORWARD)
    for name, data in tensors.items():
        writer.add_tensor(name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
