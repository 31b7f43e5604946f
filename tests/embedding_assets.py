"""A tiny BERT embedding model GGUF, made on the spot for the embedding-model tests.

No real embedding model is reachable where the tests run (no network; the smallest real one,
bge-micro, is tens of megabytes). :func:`write_embedding_model` writes one that llama.cpp
loads and embeds with like a real one: architecture ``bert`` (an encoder: attention not
causal, no KV cache, no output head), mean pooling, laid out as llama.cpp's converter
(``conversion/bert.py``) writes a BERT, only small: 2 layers, width :data:`EMBED`, trained
context :data:`CONTEXT`. Its weights are random (small, from the seed): the vectors mean
nothing, but they are finite, deterministic and differ from one text to the next.

The vocabulary is WordPiece (``bert`` tokenizer model), as the converter stores it: word
starts carry the phantom space ``▁``, word continuations (``##x`` in BERT's own files) are
bare; ``[CLS]`` and ``[SEP]`` are control tokens that llama.cpp puts around every text it
tokenizes with special tokens (so a text of n tokens is n + 2). Every lower-case letter, digit
and ASCII punctuation mark is a token both as a word start and as a continuation, so any
English text tokenizes without ``[UNK]``; a few whole words make tokens of their own.
"""

from __future__ import annotations

import string
from pathlib import Path

import gguf
import numpy as np

EMBED = 64
BLOCK_COUNT = 2
HEAD_COUNT = 4
FEED_FORWARD = 128
CONTEXT = 512
CONTROL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["hello", "world", "goodbye", "the", "sea", "tide", "bread"]


def vocabulary() -> list[str]:
    """The token texts, in id order: control tokens, then pieces as the converter writes them."""
    characters = string.ascii_lowercase + string.digits + string.punctuation
    pieces = [f"\u2581{c}" for c in characters] + list(characters)
    pieces += [f"\u2581{word}" for word in WORDS]
    return CONTROL + pieces


def write_embedding_model(
    path: Path,
    seed: int = 0,
    name: str = "lmserve test embedder",
    *,
    embed: int = EMBED,
    context: int = CONTEXT,
    heads: int = HEAD_COUNT,
) -> Path:
    """Write a tiny ``bert`` embedding model to ``path`` and return ``path``.

    Norms are 1 with bias 0, other weights ``normal * 0.1`` from
    ``numpy.random.default_rng(seed)``.  ``embed`` (its width), ``context`` (its trained
    context) and ``heads`` make it as wide and as long as a real model, still 2 layers.
    """
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    tokens = vocabulary()
    types = [gguf.TokenType.CONTROL] * len(CONTROL)
    types += [gguf.TokenType.NORMAL] * (len(tokens) - len(CONTROL))
    ids = {token: index for index, token in enumerate(tokens)}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(context)
    writer.add_embedding_length(embed)
    writer.add_block_count(BLOCK_COUNT)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(heads)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_type_count(2)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_mask_token_id(ids["[MASK]"])

    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": rand(len(tokens), embed),
        "token_types.weight": rand(2, embed),
        "position_embd.weight": rand(context, embed),
        "token_embd_norm.weight": ones(embed),
        "token_embd_norm.bias": zeros(embed),
    }
    for i in range(BLOCK_COUNT):
        blk = f"blk.{i}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensors[f"{blk}.{part}.weight"] = rand(embed, embed)
            tensors[f"{blk}.{part}.bias"] = zeros(embed)
        tensors[f"{blk}.attn_output_norm.weight"] = ones(embed)
        tensors[f"{blk}.attn_output_norm.bias"] = zeros(embed)
        tensors[f"{blk}.ffn_up.weight"] = rand(FEED_FORWARD, embed)
        tensors[f"{blk}.ffn_up.bias"] = zeros(FEED_FORWARD)
        tensors[f"{blk}.ffn_down.weight"] = rand(embed, FEED_FORWARD)
        tensors[f"{blk}.ffn_down.bias"] = zeros(embed)
        tensors[f"{blk}.layer_output_norm.weight"] = ones(embed)
        tensors[f"{blk}.layer_output_norm.bias"] = zeros(embed)
    for tensor_name, data in tensors.items():
        writer.add_tensor(tensor_name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
