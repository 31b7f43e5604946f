"""The engine in worker processes against the in-process engine it replaced, alternately.

Starts this tree's lmserve and a baseline tree's (``--baseline``, a git revision; by default
the last commit whose engine ran in the server process), both on the default model with the
same options, and drives one at a time: one streaming client, then 8, in alternating order
for ``--trials`` trials, so the machine's drifting speed weighs on both alike.  Prints the
median aggregate tokens/s of each, their ratio, and the median of the per-trial ratios
(each trial's pair ran back to back, so its ratio is the least touched by the drift).

``--flash-attention`` is passed to this tree (the baseline always leaves it to llama.cpp,
which is what ``auto`` does).

    python bench/isolation.py [--baseline 347e617] [--trials 4] [--parallel 8]
        [--flash-attention auto|on|off]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

REPO = Path(__file__).resolve().parent.parent
IN_PROCESS_ENGINE = "347e617"  # the last commit before the engine moved to worker processes


def export_source(revision: str, into: Path) -> Path:
    """The ``src`` folder of ``revision``, written out of git (the work tree is untouched)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


async def measure(
    servers: list[harness.RunningServer], clients: list[int], trials: int, rounds: dict[int, int]
) -> dict[str, dict[int, list[harness.LoadFigures]]]:
    for server in servers:
        await harness.warm_up(server)
    figures: dict[str, dict[int, list[harness.LoadFigures]]] = {
        s.name: {c: [] for c in clients} for s in servers
    }
    for trial in range(trials):
        for count in clients:
            order = servers if (trial + count) % 2 == 0 else servers[::-1]
            for server in order:
                result = await harness.run_load(server, count, rounds[count])
                figures[server.name][count].append(result)
                print(
                    f"  trial {trial + 1}, {count} clients, {server.name:12s}: "
                    f"{result.aggregate_tps:6.1f} tok/s, TTFT {result.median_ttft:.3f} s",
                    flush=True,
                )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=IN_PROCESS_ENGINE, help="git revision to compare")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--flash-attention", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()
    clients = [1, 8]
    rounds = {1: 4, 8: 2}
    print(
        f"SmolLM2-135M-Instruct Q4_1, {harness.NEW_TOKENS} new tokens per request, "
        f"{harness.threads()} threads, --parallel {args.parallel}, median of {args.trials} "
        f"alternating trials; worker processes (this tree, flash attention "
        f"{args.flash_attention}) vs in-process ({args.baseline})",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="lmserve-baseline-") as folder:
        source = export_source(args.baseline, Path(folder))
        with (
            harness.lmserve(
                parallel=args.parallel,
                name="worker",
                extra=["--flash-attention", args.flash_attention],
            ) as ours,
            harness.lmserve(parallel=args.parallel, source=source, name="in-process") as theirs,
        ):
            figures = asyncio.run(measure([ours, theirs], clients, args.trials, rounds))
    print()
    print("| clients | worker process tok/s | in-process tok/s | ratio | median of trial ratios |")
    print("|---:|---:|---:|---:|---:|")
    for count in clients:
        ours, theirs = figures["worker"][count], figures["in-process"][count]
        ours_tps = statistics.median(f.aggregate_tps for f in ours)
        theirs_tps = statistics.median(f.aggregate_tps for f in theirs)
        per_trial = statistics.median(
            a.aggregate_tps / b.aggregate_tps for a, b in zip(ours, theirs, strict=True)
        )
        print(
            f"| {count} | {ours_tps:.1f} | {theirs_tps:.1f} | {ours_tps / theirs_tps:.3f}x "
            f"| {per_trial:.3f}x |"
        )


if __name__ == "__main__":
    main()
