"""lmserve against llama.cpp's own llama-server, on the same kernels, alternately.

llama-server is built from the llama.cpp vendored in the installed llama-cpp-python
(:mod:`llama_server`, cached after the first build).  Both servers start at once on the
default model with the same slots, context per slot, threads and repack setting; only one is
driven at a time.  Each round runs every client count (1, 2, 4, 8 by default; each client
streams ``--requests`` requests of 128 new tokens, one after another) on both servers, the
order alternating, so the machine's drifting speed weighs on both alike.  Prints every trial,
then per client count the median tokens/s and time to first token of each and the median of
the per-round ratios, and the issue's targets.

Flash attention is each server's default (llama.cpp's choice, on for a CPU) unless
``--flash-attention on|off`` sets it on both.

    python bench/vs_llama_server.py [--rounds 3] [--clients 1 2 4 8] [--repack off]
        [--flash-attention auto|on|off]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import llama_server

CONTEXT_PER_SLOT = 4096


async def measure(
    ours: harness.RunningServer,
    theirs: harness.RunningServer,
    clients: list[int],
    rounds: int,
    requests: int,
) -> dict[int, list[tuple[harness.LoadFigures, harness.LoadFigures]]]:
    for server in (ours, theirs):
        await harness.warm_up(server)
    pairs: dict[int, list[tuple[harness.LoadFigures, harness.LoadFigures]]] = {
        count: [] for count in clients
    }
    for round_ in range(rounds):
        for position, count in enumerate(clients):
            first_ours = (round_ + position) % 2 == 0
            order = (ours, theirs) if first_ours else (theirs, ours)
            figures = {}
            for server in order:
                result = await harness.run_load(server, count, requests)
                figures[server.name] = result
                print(
                    f"  round {round_ + 1}, {count} clients, {server.name:12s}: "
                    f"{result.aggregate_tps:6.1f} tok/s, TTFT {result.median_ttft:.3f} s",
                    flush=True,
                )
            mine, peer = figures[ours.name], figures[theirs.name]
            print(
                f"  round {round_ + 1}, {count} clients, ratio       : "
                f"{mine.aggregate_tps / peer.aggregate_tps:.3f}",
                flush=True,
            )
            pairs[count].append((mine, peer))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=2, help="requests per client per trial")
    parser.add_argument("--parallel", type=int, default=8, help="slots of each server")
    llama_server.add_engine_options(parser)
    args = parser.parse_args()

    binary = llama_server.build()
    print(
        f"SmolLM2-135M-Instruct Q4_1, {harness.NEW_TOKENS} new tokens per request, "
        f"{harness.threads()} threads, {args.parallel} slots of {CONTEXT_PER_SLOT} tokens, "
        f"repack {args.repack}, flash attention {args.flash_attention}, "
        f"{args.requests} requests per client, {args.rounds} rounds; "
        f"lmserve (this tree) vs {binary}",
        flush=True,
    )
    repack = args.repack == "on"
    with (
        harness.lmserve(
            parallel=args.parallel,
            context_length=CONTEXT_PER_SLOT,
            extra=["--repack", args.repack, "--flash-attention", args.flash_attention],
        ) as ours,
        llama_server.running(
            binary, args.parallel, CONTEXT_PER_SLOT, repack, args.flash_attention
        ) as theirs,
    ):
        pairs = asyncio.run(measure(ours, theirs, args.clients, args.rounds, args.requests))

    print()
    print(
        "| clients | lmserve tok/s | llama-server tok/s | ratio (median of rounds) "
        "| lmserve TTFT s | llama-server TTFT s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    ratios: dict[int, float] = {}
    ttfts: dict[int, tuple[float, float]] = {}
    for count, runs in pairs.items():
        ratio = statistics.median(m.aggregate_tps / p.aggregate_tps for m, p in runs)
        ratios[count] = ratio
        ttfts[count] = (
            statistics.median(m.median_ttft for m, _ in runs),
            statistics.median(p.median_ttft for _, p in runs),
        )
        print(
            f"| {count} | {statistics.median(m.aggregate_tps for m, _ in runs):.1f} "
            f"| {statistics.median(p.aggregate_tps for _, p in runs):.1f} | {ratio:.3f}x "
            f"| {ttfts[count][0]:.3f} | {ttfts[count][1]:.3f} |"
        )
    print()
    one, top = min(args.clients), max(args.clients)
    checks = [
        (f"tokens/s at {one} client, lmserve / llama-server", ratios[one], ">=", 1.00),
        (f"tokens/s at {top} clients, lmserve / llama-server", ratios[top], ">=", 1.05),
        (
            f"median TTFT at {top} clients, lmserve - llama-server (s)",
            ttfts[top][0] - ttfts[top][1],
            "<=",
            0.0,
        ),
    ]
    harness.print_checks(checks)


if __name__ == "__main__":
    main()
