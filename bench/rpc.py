"""A model split over two llama.cpp RPC workers on loopback, against the same model on this
machine alone; and lmserve's split against llama.cpp's own ``llama-server --rpc`` on the very
same workers.

Two ``lmserve rpc-worker`` processes (one thread each: the two cores between them) hold
SmolLM2's layers; this machine keeps the token embeddings.  Four servings of the same model,
one stream at a time, 64 new tokens a request (end-of-text banned, LM Studio's sampling):

- lmserve, local (all threads) and split (``rpc`` in its load API: loaded for each round,
  unloaded after it, since a worker serves one client at a time);
- llama-server (the same llama.cpp, built with ``-DGGML_RPC=ON``), local, and split with
  ``--rpc`` (started for each round).

Rounds alternate the order of the four.  Printed: each round's tokens/s, the medians, what
the split costs per token (the time a token takes split, less the time it takes here: the
hops to both workers and back, and each worker computing its layers on one thread), and
lmserve's split against llama-server's.  Target: lmserve's split no slower than
llama-server's (ratio >= 0.95, this machine's drift between rounds being larger).

    python bench/rpc.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import llama_server
from lmserve.rpc.probe import RpcEndpointError, check_endpoint

NEW_TOKENS = 64
REQUESTS = 3  # a round's requests to each serving, one at a time
SPLIT = "smol-split"


@contextlib.contextmanager
def workers() -> Iterator[list[str]]:
    """Two rpc-workers of one thread each, on free loopback ports."""
    ports = [harness.free_port(), harness.free_port()]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "lmserve", "rpc-worker", "--port", str(port), "--threads", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    endpoints = [f"127.0.0.1:{port}" for port in ports]
    try:
        for endpoint in endpoints:
            deadline = time.monotonic() + 30
            while True:
                try:
                    check_endpoint(endpoint)
                    break
                except RpcEndpointError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield endpoints
    finally:
        for process in processes:
            harness.stop(process)


async def tokens_per_second(url: str, model: str, round_index: int) -> float:
    speeds = []
    async with httpx.AsyncClient(timeout=300) as client:
        for n in range(REQUESTS):
            topic = harness.TOPICS[(round_index * REQUESTS + n) % len(harness.TOPICS)]
            messages = [{"role": "user", "content": f"Tell me a story about {topic}."}]
            body = harness.chat_body(model, messages, seed=n, max_tokens=NEW_TOKENS)
            speeds.append((await harness.stream_chat(client, url, body)).tokens_per_second)
    return statistics.median(speeds)


def lmserve_split(server: harness.RunningServer, endpoints: list[str], index: int) -> float:
    body = {"model": server.model, "identifier": SPLIT, "parallel": 1, "rpc": endpoints}
    loaded = httpx.post(f"{server.base_url}/api/v1/models/load", json=body, timeout=300)
    loaded.raise_for_status()
    try:
        return asyncio.run(tokens_per_second(server.base_url, SPLIT, index))
    finally:
        httpx.post(f"{server.base_url}/api/v1/models/unload", json={"instance_id": SPLIT})


def llama_server_split(binary: Path, endpoints: list[str], index: int) -> float:
    extra = ["--rpc", ",".join(endpoints), "--n-gpu-layers", "99"]
    with llama_server.running(binary, 1, 4096, repack=True, extra=extra) as server:
        return asyncio.run(tokens_per_second(server.base_url, server.model, index))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binary = llama_server.build(rpc=True)
    figures: dict[str, list[float]] = {}
    with (
        workers() as endpoints,
        harness.lmserve(parallel=1, extra=["--sdk-port", "off"]) as ours,
        llama_server.running(binary, 1, 4096, repack=True) as theirs,
    ):
        servings = {
            "lmserve local": lambda i: asyncio.run(tokens_per_second(ours.base_url, ours.model, i)),
            "lmserve split": lambda i: lmserve_split(ours, endpoints, i),
            "llama-server local": lambda i: asyncio.run(
                tokens_per_second(theirs.base_url, theirs.model, i)
            ),
            "llama-server split": lambda i: llama_server_split(binary, endpoints, i),
        }
        names = list(servings)
        for index in range(args.rounds):
            order = names if index % 2 == 0 else names[::-1]
            speeds = {name: servings[name](index) for name in order}
            for name, speed in speeds.items():
                figures.setdefault(name, []).append(speed)
            print(
                f"round {index + 1}: "
                + ", ".join(f"{name} {speeds[name]:.1f} tok/s" for name in names),
                flush=True,
            )
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print()
    for server in ("lmserve", "llama-server"):
        local, split = medians[f"{server} local"], medians[f"{server} split"]
        cost = (1 / split - 1 / local) * 1000
        print(
            f"{server}: local {local:.1f} tok/s, split over 2 workers {split:.1f} tok/s "
            f"({split / local:.2f}x): the split costs {cost:.1f} ms a token"
        )
    ratio = statistics.median(
        mine / peer
        for mine, peer in zip(figures["lmserve split"], figures["llama-server split"], strict=True)
    )
    print(f"lmserve split / llama-server split, tokens/s (median of rounds): {ratio:.2f}x")
    harness.print_checks([("lmserve split / llama-server split", ratio, ">=", 0.95)])


if __name__ == "__main__":
    main()
