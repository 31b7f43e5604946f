"""Single-stream speed of the default model through lmserve (128 new tokens, streaming).

Prints decode tokens/s (after the first token) and time to first token for one client, next
to a bare ``llama_cpp.Llama`` generate loop in this same run.  The two alternate request by
request, so that noise from the machine falls on both alike.

    python bench/single_stream.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


async def measure(rounds: int) -> tuple[float, float, float]:
    with harness.lmserve(parallel=4) as server:
        await harness.warm_up(server)
        return await harness.alternate_with_bare(server, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    bare, tps, ttft = asyncio.run(measure(args.rounds))
    print(
        f"model: SmolLM2-135M-Instruct Q4_1, {harness.NEW_TOKENS} new tokens, "
        f"{harness.threads()} threads, median of {args.rounds} alternating rounds"
    )
    print(f"bare llama_cpp.Llama loop : {bare:7.1f} tok/s")
    print(f"lmserve, 1 stream (HTTP)  : {tps:7.1f} tok/s   median TTFT {ttft * 1000:.0f} ms")
    print(f"ratio lmserve / bare loop : {tps / bare:7.3f}")


if __name__ == "__main__":
    main()
