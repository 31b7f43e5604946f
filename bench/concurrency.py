"""lmserve against llama-cpp-python's own server, under the same streaming load.

Both serve the default model with the same thread count.  Both run at once but only one is
driven at a time: at each of 1, 2, 4 and 8 concurrent clients (each streaming 128 new tokens
per request, ``--rounds`` requests in a row) the two take turns for ``--trials`` trials, so
that the machine's speed, which drifts by 10-20 % from minute to minute on a shared VM, weighs
on both alike.  Figures are medians over the trials: aggregate tokens/s, median per-request
decode tokens/s, median time to first token, and the ratios the concurrency issue sets as
targets.  A bare ``llama_cpp.Llama`` loop in this process, alternated with lmserve's
single-client requests, is the ceiling for one stream.

    pip install -e '.[bench]'      # llama-cpp-python's server extra
    python bench/concurrency.py [--clients 1 2 4 8] [--parallel 8] [--trials 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def median_figures(trials: list[harness.LoadFigures]) -> harness.LoadFigures:
    return harness.LoadFigures(
        clients=trials[0].clients,
        aggregate_tps=statistics.median(t.aggregate_tps for t in trials),
        median_request_tps=statistics.median(t.median_request_tps for t in trials),
        median_ttft=statistics.median(t.median_ttft for t in trials),
        requests=sum(t.requests for t in trials),
    )


async def compare(
    servers: list[harness.RunningServer], clients: list[int], trials: int, rounds: int
) -> dict[str, dict[int, harness.LoadFigures]]:
    for server in servers:
        await harness.warm_up(server)
    results: dict[str, dict[int, list[harness.LoadFigures]]] = {s.name: {} for s in servers}
    for count in clients:
        for trial in range(trials):
            order = servers if trial % 2 == 0 else servers[::-1]
            for server in order:
                f = await harness.run_load(server, count, rounds)
                results[server.name].setdefault(count, []).append(f)
                print(
                    f"  {server.name:17s} {count} clients, trial {trial + 1}: "
                    f"{f.aggregate_tps:6.1f} tok/s total, {f.median_request_tps:6.1f} tok/s "
                    f"per request, TTFT {f.median_ttft:6.3f} s",
                    flush=True,
                )
    return {
        name: {count: median_figures(runs) for count, runs in by_count.items()}
        for name, by_count in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--parallel", type=int, default=8, help="lmserve's slots")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per trial")
    parser.add_argument("--bare-rounds", type=int, default=6)
    args = parser.parse_args()

    print(
        f"SmolLM2-135M-Instruct Q4_1, {harness.NEW_TOKENS} new tokens per request, "
        f"{harness.threads()} threads, lmserve --parallel {args.parallel}, "
        f"{args.rounds} requests per client, median of {args.trials} trials",
        flush=True,
    )
    with (
        harness.lmserve(parallel=args.parallel) as ours,
        harness.llama_cpp_python_server() as theirs,
    ):
        figures = asyncio.run(compare([ours, theirs], args.clients, args.trials, args.rounds))
        bare, single, _ = asyncio.run(harness.alternate_with_bare(ours, args.bare_rounds))
    a_all, b_all = figures[ours.name], figures[theirs.name]

    print()
    print(
        "| clients | lmserve tok/s | llama-cpp-python tok/s | ratio | lmserve per-req tok/s "
        "| l-c-p per-req tok/s | lmserve TTFT s | l-c-p TTFT s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count in args.clients:
        a, b = a_all[count], b_all[count]
        print(
            f"| {count} | {a.aggregate_tps:.1f} | {b.aggregate_tps:.1f} | "
            f"{a.aggregate_tps / b.aggregate_tps:.2f}x | {a.median_request_tps:.1f} | "
            f"{b.median_request_tps:.1f} | {a.median_ttft:.3f} | {b.median_ttft:.3f} |"
        )
    print()
    top, one = max(args.clients), min(args.clients)
    checks = [
        (
            f"lmserve aggregate at {top} clients / llama-cpp-python's",
            a_all[top].aggregate_tps / b_all[top].aggregate_tps,
            ">=",
            3.0,
        ),
        (
            f"lmserve aggregate at {top} clients / lmserve at {one} client",
            a_all[top].aggregate_tps / a_all[one].aggregate_tps,
            ">=",
            1.6,
        ),
        (f"lmserve median TTFT at {top} clients (s)", a_all[top].median_ttft, "<=", 0.3),
        (
            "lmserve single-stream tok/s / bare Llama loop "
            f"({single:.1f} / {bare:.1f}, alternating)",
            single / bare,
            ">=",
            0.95,
        ),
    ]
    harness.print_checks(checks)


if __name__ == "__main__":
    main()
