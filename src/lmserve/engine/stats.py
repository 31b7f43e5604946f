"""The engine's running totals, for the stats endpoint and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    """Running totals of the engine's work, for the stats endpoint and benchmarks."""

    steps: int = 0
    batch_tokens: int = 0  # tokens through llama_decode: prompt chunks and generated tokens
    generated_tokens: int = 0
    reused_prompt_tokens: int = 0  # from any cache: the slots' own, copies, the prompt cache
    restored_prompt_tokens: int = 0  # of those, restored from the prompt cache
    stream_copies: int = 0
    decode_seconds: float = 0.0
    sample_seconds: float = 0.0
    step_seconds: float = 0.0  # whole steps: planning, decode, sampling, bookkeeping
    draft_tokens: int = 0  # put in batches to be checked (speculative decoding)
    accepted_draft_tokens: int = 0
    images: int = 0  # encoded and decoded into a sequence (not those reused from a cache)
    image_tokens: int = 0
    image_seconds: float = 0.0
