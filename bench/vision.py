"""Time to first token with an image: lmserve against llama.cpp's own llama-server.

Both servers start at once on the default model with the same vision projector: a tiny
``gemma3`` one written for the run by ``tests/vision_assets.py`` (no real projector is
reachable; its 16 image tokens per image cost what any projector's encoding and prompt read
cost, at a small scale).  lmserve gets it as ``serve --mmproj PATH``, llama-server (built by
:mod:`llama_server`) as ``--mmproj PATH``; same slots, context per slot, threads, repack and
flash attention settings.  Each round streams one chat completion to each server, the order
alternating: a user message of one ``image_url`` part (a PNG, as a ``data:`` URL) and a short
text.  The image is new every round (random pixels from the round's seed), the same for both
servers within a round, so neither server's cache has its tokens; the text before it may be
reused from the last round by both.  Prints every trial (with the prompt tokens each server
reports, when it does), then the median time to first token of each and the median of the
per-round ratios.

    python bench/vision.py [--rounds 10] [--image-size 64] [--repack off]
        [--flash-attention auto|on|off]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.vision_assets
from tests import vision_assets

import harness
import llama_server

CONTEXT_PER_SLOT = 4096
NEW_TOKENS = 8  # only the first one is timed
PROMPT = "What is in this picture? Answer in one word."


def image_message(seed: int, size: int) -> list[dict[str, Any]]:
    """One user message: a ``size`` x ``size`` PNG of random pixels from ``seed``, then text."""
    png = vision_assets.image_bytes("PNG", (size, size), seed=seed)
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": vision_assets.data_url(png)}},
                {"type": "text", "text": PROMPT},
            ],
        }
    ]


async def first_token(
    client: httpx.AsyncClient, server: harness.RunningServer, seed: int, size: int
) -> tuple[float, int | None]:
    """Time to the first content chunk of a streamed chat completion with the image of
    ``seed``, and the prompt tokens the server reports (None if it reports none)."""
    body = {
        **harness.chat_body(server.model, [], seed, max_tokens=NEW_TOKENS),
        "messages": image_message(seed, size),
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    prompt_tokens = None
    async for event in harness.chat_events(client, server.base_url, body):
        if harness.delta_text(event) and first is None:
            first = time.perf_counter()
        if event.get("usage"):
            prompt_tokens = event["usage"].get("prompt_tokens")
    if first is None:
        raise RuntimeError(f"{server.name}: no content streamed")
    return first - started, prompt_tokens


async def measure(
    ours: harness.RunningServer, theirs: harness.RunningServer, rounds: int, size: int
) -> list[tuple[float, float]]:
    """(lmserve TTFT, llama-server TTFT) per round."""
    pairs = []
    async with httpx.AsyncClient(timeout=600.0) as client:
        for server in (ours, theirs):
            await harness.warm_up(server)
            await first_token(client, server, seed=1_000_000, size=size)  # an image, untimed
        for round_ in range(rounds):
            order = (ours, theirs) if round_ % 2 == 0 else (theirs, ours)
            ttfts = {}
            for server in order:
                ttft, prompt_tokens = await first_token(client, server, seed=round_, size=size)
                ttfts[server.name] = ttft
                print(
                    f"  round {round_ + 1}, {server.name:12s}: TTFT {ttft:.3f} s, "
                    f"prompt tokens {prompt_tokens if prompt_tokens is not None else '-'}",
                    flush=True,
                )
            mine, peer = ttfts[ours.name], ttfts[theirs.name]
            print(f"  round {round_ + 1}, ratio       : {mine / peer:.3f}", flush=True)
            pairs.append((mine, peer))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64, help="side of the PNG, pixels")
    parser.add_argument("--parallel", type=int, default=4, help="slots of each server")
    llama_server.add_engine_options(parser)
    args = parser.parse_args()

    binary = llama_server.build()
    print(
        f"SmolLM2-135M-Instruct Q4_1 with a test gemma3 projector "
        f"({vision_assets.IMAGE_TOKENS} tokens per image), one {args.image_size}x"
        f"{args.image_size} PNG per request, new every round, {harness.threads()} threads, "
        f"{args.parallel} slots of {CONTEXT_PER_SLOT} tokens, repack {args.repack}, "
        f"flash attention {args.flash_attention}, {args.rounds} rounds; "
        f"lmserve (this tree) vs {binary}",
        flush=True,
    )
    repack = args.repack == "on"
    with tempfile.TemporaryDirectory(prefix="lmserve-bench-mmproj-") as folder:
        projector = vision_assets.write_projector(Path(folder) / "mmproj-test.gguf", n_embd=576)
        with (
            harness.lmserve(
                parallel=args.parallel,
                context_length=CONTEXT_PER_SLOT,
                extra=[
                    "--mmproj",
                    str(projector),
                    "--repack",
                    args.repack,
                    "--flash-attention",
                    args.flash_attention,
                ],
            ) as ours,
            llama_server.running(
                binary,
                args.parallel,
                CONTEXT_PER_SLOT,
                repack,
                args.flash_attention,
                extra=["--mmproj", str(projector)],
            ) as theirs,
        ):
            pairs = asyncio.run(measure(ours, theirs, args.rounds, args.image_size))

    harness.print_paired_medians(pairs, "TTFT s")


if __name__ == "__main__":
    main()
