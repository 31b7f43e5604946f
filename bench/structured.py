"""Structured output's cost per token: lmserve against llama.cpp's own llama-server.

Both servers start at once on the default model (same slots, context, threads, repack and
flash attention).  Each round streams four chat completions, the servers' order alternating:
to each server, one with ``response_format`` a JSON schema (an array of at least 40 records,
so the grammar constrains every one of the 128 tokens) and one without.  lmserve enforces the
schema with llguidance, llama-server with llama.cpp's grammar sampler.  End-of-text tokens
are banned, so every answer is 128 tokens.  Prints every trial's generation speed (tokens/s
after the first token), then the medians, each server's speed with the schema as a share of
its speed without, and lmserve's speed over llama-server's with the schema.

    python bench/structured.py [--rounds 6] [--repack off] [--flash-attention auto|on|off]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import llama_server

CONTEXT_PER_SLOT = 4096
SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "city": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "city", "age"],
        "additionalProperties": False,
    },
    "minItems": 40,
}
PROMPT = "List people you know as JSON records of name, city and age."


def body(server: harness.RunningServer, seed: int, schema: bool) -> dict[str, Any]:
    request = harness.chat_body(server.model, [{"role": "user", "content": PROMPT}], seed)
    if schema:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "people", "schema": SCHEMA},
        }
    return request


async def measure(
    ours: harness.RunningServer, theirs: harness.RunningServer, rounds: int
) -> dict[tuple[str, bool], list[float]]:
    speeds: dict[tuple[str, bool], list[float]] = {}
    async with httpx.AsyncClient(timeout=300) as client:
        for server in (ours, theirs):  # unmeasured: loads what a first request loads
            for schema in (False, True):
                await harness.stream_chat(client, server.base_url, body(server, 0, schema))
        for round_ in range(rounds):
            order = (ours, theirs) if round_ % 2 == 0 else (theirs, ours)
            for server in order:
                for schema in (False, True) if round_ % 2 == 0 else (True, False):
                    result = await harness.stream_chat(
                        client, server.base_url, body(server, round_ + 1, schema)
                    )
                    speed = result.tokens_per_second
                    speeds.setdefault((server.name, schema), []).append(speed)
                    print(
                        f"  round {round_ + 1}, {server.name:12s} "
                        f"{'schema' if schema else 'free  '}: {speed:6.1f} tok/s "
                        f"({result.tokens} chunks)",
                        flush=True,
                    )
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=4, help="slots of each server")
    llama_server.add_engine_options(parser)
    args = parser.parse_args()

    binary = llama_server.build()
    print(
        f"SmolLM2-135M-Instruct Q4_1, {harness.NEW_TOKENS} new tokens per request, one request "
        f"at a time, {harness.threads()} threads, {args.parallel} slots of {CONTEXT_PER_SLOT} "
        f"tokens, repack {args.repack}, flash attention {args.flash_attention}, "
        f"{args.rounds} rounds; lmserve (this tree) vs {binary}",
        flush=True,
    )
    with (
        harness.lmserve(
            parallel=args.parallel,
            context_length=CONTEXT_PER_SLOT,
            extra=["--repack", args.repack, "--flash-attention", args.flash_attention],
        ) as ours,
        llama_server.running(
            binary, args.parallel, CONTEXT_PER_SLOT, args.repack == "on", args.flash_attention
        ) as theirs,
    ):
        speeds = asyncio.run(measure(ours, theirs, args.rounds))

    def median(name: str, schema: bool) -> float:
        return statistics.median(speeds[(name, schema)])

    print()
    print("| server | free tok/s | schema tok/s | schema / free |")
    print("|---|---:|---:|---:|")
    for name in (ours.name, theirs.name):
        free, constrained = median(name, False), median(name, True)
        print(f"| {name} | {free:.1f} | {constrained:.1f} | {constrained / free:.3f} |")
    ratio = median(ours.name, True) / median(theirs.name, True)
    print(f"\nwith the schema, lmserve / llama-server: {ratio:.3f}x")


if __name__ == "__main__":
    main()
