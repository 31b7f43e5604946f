"""Log-probabilities in OpenAI's two shapes: chat's ``content`` list and the legacy one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmserve.engine.types import TokenLogprob


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(entries: Sequence[TokenLogprob], top: int) -> list[dict[str, Any]]:
    """``choices[].logprobs.content`` of a chat completion."""
    return [
        {
            "token": _text(entry.piece),
            "logprob": entry.logprob,
            "bytes": list(entry.piece),
            "top_logprobs": [
                {"token": _text(piece), "logprob": logprob, "bytes": list(piece)}
                for _, piece, logprob in entry.top[:top]
            ],
        }
        for entry in entries
    ]


def completion_logprobs(entries: Sequence[TokenLogprob], text_offset: int) -> dict[str, Any]:
    """``choices[].logprobs`` of a text completion; offsets count from ``text_offset``."""
    offsets = []
    position = text_offset
    for entry in entries:
        offsets.append(position)
        position += len(_text(entry.piece))
    return {
        "tokens": [_text(entry.piece) for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [
            {_text(piece): logprob for _, piece, logprob in entry.top} for entry in entries
        ],
        "text_offset": offsets,
    }
