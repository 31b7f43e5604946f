"""Reranking 64 documents: lmserve against llama.cpp's own llama-server on the same file.

No reranker GGUF is reachable here: both servers serve the tiny Qwen3-type reranker that
``tests/rerank_assets.py`` writes (2 layers, width 64), llama-server with ``--reranking``,
lmserve loading it just in time beside the default model.  Same context, threads, repack and
flash attention settings.  Each round sends one ``/v1/rerank`` request of a query and 64
documents to each server, the order alternating, and times the whole answer.  Prints every
trial, then the medians and the median of the per-round ratios.

    python bench/rerank.py [--rounds 8] [--repack off] [--flash-attention auto|on|off]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.rerank_assets
from tests import rerank_assets

import harness
import llama_server

CONTEXT = 512  # the reranker's training context
DOCUMENTS = 64
NAME = "tiny-reranker"
WORDS = [
    "the",
    "sea",
    "tide",
    "harbour",
    "bread",
    "kitchen",
    "train",
    "station",
    "mountain",
    "noon",
    "rain",
    "wind",
    "boat",
]


def documents(round_: int) -> list[str]:
    """64 short documents, different every round (so no cache answers them)."""
    return [
        " ".join(WORDS[(round_ * 7 + index * 3 + k) % len(WORDS)] for k in range(12))
        + f" ({round_}.{index})"
        for index in range(DOCUMENTS)
    ]


def timed(client: httpx.Client, server: harness.RunningServer, round_: int) -> float:
    body = {"model": NAME, "query": "Which is about the sea?", "documents": documents(round_)}
    started = time.perf_counter()
    answer = client.post(server.base_url + "/v1/rerank", json=body)
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    assert len(answer.json()["results"]) == DOCUMENTS
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    llama_server.add_engine_options(parser)
    args = parser.parse_args()

    binary = llama_server.build()
    print(
        f"a tiny Qwen3-type reranker (tests/rerank_assets.py), {DOCUMENTS} documents per "
        f"request, {harness.threads()} threads, context {CONTEXT}, repack {args.repack}, "
        f"flash attention {args.flash_attention}, {args.rounds} rounds; lmserve (this tree) vs "
        f"{binary}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="lmserve-bench-rerank-") as folder:
        home = Path(folder)
        model = rerank_assets.write_reranker(
            home / "models" / "test" / f"{NAME}-GGUF" / f"{NAME}.gguf"
        )
        with (
            harness.lmserve(
                parallel=1,
                context_length=CONTEXT,
                home=home,
                extra=["--repack", args.repack, "--flash-attention", args.flash_attention],
            ) as ours,
            llama_server.running(  # 8 slots: it batches pairs across them, lmserve 8 a decode
                binary,
                8,
                CONTEXT,
                args.repack == "on",
                args.flash_attention,
                model=NAME,
                path=model,
                extra=["--reranking"],
            ) as theirs,
            httpx.Client(timeout=300) as client,
        ):
            for server in (ours, theirs):  # unmeasured: lmserve loads the reranker here
                timed(client, server, 0)
            pairs = []
            for round_ in range(1, args.rounds + 1):
                order = (ours, theirs) if round_ % 2 else (theirs, ours)
                seconds = {}
                for server in order:
                    seconds[server.name] = timed(client, server, round_)
                    print(f"  round {round_}, {server.name:12s}: {seconds[server.name]:.3f} s")
                pairs.append((seconds[ours.name], seconds[theirs.name]))
                print(f"  round {round_}, ratio       : {pairs[-1][0] / pairs[-1][1]:.3f}")
    harness.print_paired_medians(pairs, "s")


if __name__ == "__main__":
    main()
