"""GPU offload against the CPU: the same load through lmserve with ``--gpu max`` and ``--gpu off``.

Streams the default model (128 new tokens per request) at each client count, alternating the
two servers trial by trial so that drift in the machine's speed falls on both, and prints
aggregate tokens/s, median per-request tokens/s, median time to first token and the ratio.
It also checks that greedy answers are the same alone and in a full batch on the GPU.
A llama.cpp build without a GPU backend has nothing to compare: the script says so.

    python bench/gpu_offload.py [--clients 1 8 32] [--trials 2] [--parallel 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from lmserve.engine.llama import gpu_offload_supported


async def greedy_answers(server: harness.RunningServer, together: bool) -> list[str]:
    """One greedy answer per topic, asked one by one or all at once."""

    async def ask(client: httpx.AsyncClient, topic: str) -> str:
        body = {
            "model": server.model,
            "messages": [{"role": "user", "content": f"Write a story about {topic}."}],
            "max_tokens": 64,
            "temperature": 0,
        }
        response = await client.post(server.base_url + "/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]

    async with httpx.AsyncClient(timeout=300.0) as client:
        if together:
            return list(await asyncio.gather(*(ask(client, t) for t in harness.TOPICS)))
        return [await ask(client, topic) for topic in harness.TOPICS]


async def measure(clients: list[int], trials: int, parallel: int) -> None:
    runs: dict[tuple[str, int], list[harness.LoadFigures]] = {}
    with (
        harness.lmserve(parallel=parallel, extra=["--gpu", "max"]) as gpu,
        harness.lmserve(parallel=parallel, extra=["--gpu", "off"]) as cpu,
    ):
        for server in (gpu, cpu):
            await harness.warm_up(server)
        alone = await greedy_answers(gpu, together=False)
        batched = await greedy_answers(gpu, together=True)
        same = sum(a == b for a, b in zip(alone, batched, strict=True))
        for _ in range(trials):
            for count in clients:
                for name, server in (("gpu", gpu), ("cpu", cpu)):
                    figures = await harness.run_load(server, count)
                    runs.setdefault((name, count), []).append(figures)

    def median(name: str, count: int, field: str) -> float:
        return statistics.median(getattr(f, field) for f in runs[(name, count)])

    print(
        f"model: SmolLM2-135M-Instruct Q4_1, {harness.NEW_TOKENS} new tokens, --parallel "
        f"{parallel}, {harness.threads()} CPU threads, median of {trials} alternating trials"
    )
    print(
        "| clients | GPU tok/s | CPU tok/s | ratio | GPU per-req tok/s | CPU per-req tok/s "
        "| GPU TTFT s | CPU TTFT s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count in clients:
        gpu_tps = median("gpu", count, "aggregate_tps")
        cpu_tps = median("cpu", count, "aggregate_tps")
        print(
            f"| {count} | {gpu_tps:.1f} | {cpu_tps:.1f} | {gpu_tps / cpu_tps:.2f}x "
            f"| {median('gpu', count, 'median_request_tps'):.1f} "
            f"| {median('cpu', count, 'median_request_tps'):.1f} "
            f"| {median('gpu', count, 'median_ttft'):.3f} "
            f"| {median('cpu', count, 'median_ttft'):.3f} |"
        )
    print(f"greedy on the GPU, alone vs {len(alone)} at once: {same}/{len(alone)} identical")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=32, help="lmserve's slots")
    args = parser.parse_args()
    if not gpu_offload_supported():
        print(
            "this llama.cpp build has no GPU backend: nothing to compare "
            '(build it with CMAKE_ARGS="-DGGML_CUDA=on")'
        )
        return
    asyncio.run(measure(args.clients, args.trials, args.parallel))


if __name__ == "__main__":
    main()
