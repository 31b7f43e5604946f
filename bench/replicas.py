"""lmserve's Ray Serve replicas on a two-node Ray cluster on loopback (``serve --ray``).

The cluster is Ray's own test cluster (``ray.cluster_utils.Cluster``): a head and one worker
node, two logical CPUs each, every process on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``).
Each replica is SmolLM2-135M Q4_1 with one thread.  Both servers of a comparison are up at
once on the cluster; each round goes to one then the other, the first alternating, so the
machine's drift touches both alike.

1. **Throughput**: 8 clients at once, 48 new tokens each, against ``--replicas 1`` and
   ``--replicas 2`` (4 slots a replica).  Printed: each round's tokens/s, and the ratio.
2. **Prefix affinity against random routing**: 8 conversations, each under its own ~2,000-token
   system prompt, 3 turns each, taken one turn at a time (a user switching chats), against
   two replicas routed by prefix (``--replica-routing prefix``) and at random (``random``).
   The prompt cache's disk tier is off, so a replica's cache is its own, as on machines of
   their own.  Printed: turns 2+'s time to
   first token (mean and median) and cached share.  Target: affinity's turns 2+ reach the
   first token in at most 0.5x random routing's time, on average.
3. **What Ray costs**: a server's start to ready (its model loaded) without Ray and with
   ``--ray --replicas 1``, rounds alternated; and memory (proportional set size, so pages
   shared between processes count once): the server with its engine, against the server
   with Ray's processes (the idle cluster's, then Serve's and the replica's with its engine).

    python bench/replicas.py [--rounds 2] [--only throughput|affinity|cost]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process on loopback

import httpx
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

CLIENTS = 8
NEW_TOKENS = 48
CONVERSATIONS = 8
TURNS = 3


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmserve-bench-nodes-") as homes:
        # Each node's own lmserve home: a replica off the server's node copies the model there.
        nodes = [
            {"num_cpus": 2, "env_vars": {"LMSERVE_HOME": str(Path(homes) / name)}}
            for name in ("head", "worker")
        ]
        ray_cluster = Cluster(
            initialize_head=True, head_node_args={**nodes[0], "include_dashboard": False}
        )
        ray_cluster.add_node(**nodes[1])
        print(f"Ray cluster up in {time.perf_counter() - started:.1f} s (2 nodes)", flush=True)
        try:
            yield ray_cluster.address
        finally:
            ray_cluster.shutdown()


def replicated(address: str, name: str, *flags: str, parallel: int = 4) -> Any:
    extra = ["--ray", address, "--threads", "1", "--sdk-port", "off", *flags]
    return harness.lmserve(parallel=parallel, extra=extra, name=name)


async def stream(client: httpx.AsyncClient, server: Any, messages: list[dict[str, str]]) -> Any:
    """Seconds to the first token, the tokens, the cached prompt tokens, the replica."""
    body = harness.chat_body(server.model, messages, seed=0, max_tokens=NEW_TOKENS)
    body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    async with client.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as r:
        replica = r.headers.get("x-lmserve-replica", "?")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if first is None and harness.delta_text(event):
                first = time.perf_counter() - started
            usage = event.get("usage") or usage
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return first or 0.0, usage.get("completion_tokens", 0), cached, usage, replica


async def throughput_round(server: Any, index: int) -> float:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                stream(client, server, [{"role": "user", "content": f"Story {index}-{n}."}])
                for n in range(CLIENTS)
            )
        )
        seconds = time.perf_counter() - started
    return sum(result[1] for result in results) / seconds


def system_prompt(conversation: int, round_index: int) -> str:
    rules = " ".join(
        f"Rule {i}: in chat {conversation}.{round_index}, answer on subject {i * 7 + conversation}."
        for i in range(120)
    )
    return f"You are assistant {conversation}.{round_index}. {rules}"


async def conversations_round(server: Any, round_index: int) -> tuple[list[float], float]:
    """Turns 2+'s times to first token, and the share of their prompts found cached."""
    histories = [
        [{"role": "system", "content": system_prompt(c, round_index)}] for c in range(CONVERSATIONS)
    ]
    later: list[float] = []
    cached = prompt = 0
    async with httpx.AsyncClient(timeout=600) as client:
        for turn in range(TURNS):
            for history in histories:
                history.append({"role": "user", "content": f"Question {turn + 1}, briefly."})
                ttft, _, hit, usage, _ = await stream(client, server, history)
                history.append({"role": "assistant", "content": f"Answer {turn + 1}."})
                if turn > 0:
                    later.append(ttft)
                    cached += hit
                    prompt += usage.get("prompt_tokens", 0)
    return later, cached / max(1, prompt)


def throughput(address: str, rounds: int) -> None:
    print(f"\n## Throughput: {CLIENTS} clients, {NEW_TOKENS} new tokens each", flush=True)
    with (
        replicated(address, "one-replica", "--replicas", "1") as one,
        replicated(address, "two-replicas", "--replicas", "2") as two,
    ):
        pairs = []
        for index in range(rounds):
            order = [(one, "1 replica"), (two, "2 replicas")]
            speeds = {}
            for server, label in order if index % 2 == 0 else order[::-1]:
                speeds[label] = asyncio.run(throughput_round(server, index))
            pairs.append((speeds["2 replicas"], speeds["1 replica"]))
            print(
                f"round {index + 1}: 1 replica {speeds['1 replica']:.1f} tok/s, "
                f"2 replicas {speeds['2 replicas']:.1f} tok/s",
                flush=True,
            )
    ratio = statistics.median(two / one for two, one in pairs)
    print(f"2 replicas / 1 replica, tokens/s (median of rounds): {ratio:.2f}x")


def affinity(address: str, rounds: int) -> None:
    print(f"\n## Prefix affinity: {CONVERSATIONS} conversations x {TURNS} turns", flush=True)
    no_disk = ("--replicas", "2", "--prompt-cache-disk", "0")
    with (
        replicated(address, "affinity", *no_disk, "--replica-routing", "prefix") as affinity,
        replicated(address, "random", *no_disk, "--replica-routing", "random") as random_,
    ):
        ratios = []
        for index in range(rounds):
            order = [(affinity, "affinity"), (random_, "random")]
            figures = {}
            for server, label in order if index % 2 == 0 else order[::-1]:
                figures[label] = asyncio.run(conversations_round(server, index))
            means = {label: statistics.mean(f[0]) for label, f in figures.items()}
            ratios.append(means["affinity"] / means["random"])
            print(
                f"round {index + 1}: turns 2+ time to first token, mean (median): "
                + ", ".join(
                    f"{label} {means[label] * 1000:.0f} ms "
                    f"({statistics.median(figures[label][0]) * 1000:.0f} ms, "
                    f"{figures[label][1]:.0%} of prompt tokens cached)"
                    for label in ("affinity", "random")
                ),
                flush=True,
            )
    ratio = statistics.median(ratios)
    print(f"affinity / random, turns 2+ mean time to first token (median of rounds): {ratio:.2f}x")
    harness.print_checks([("turns 2+ mean TTFT, affinity / random", ratio, "<=", 0.5)])


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    return children


def _tree(pid: int, children: dict[int, list[int]]) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        found.add(current := todo.pop())
        todo += children.get(current, [])
    return found


def _pss_mb(pids: set[int]) -> float:
    """Proportional set size of ``pids`` together (a page shared by n of them counts 1/n)."""
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


def _memory(server: Any) -> tuple[float, float]:
    """Megabytes: the server's process tree, and Ray's (this script's other descendants)."""
    children = _children()
    theirs = _tree(server.process.pid, children)
    ray_processes = _tree(os.getpid(), children) - theirs - {os.getpid()}
    return _pss_mb(theirs), _pss_mb(ray_processes)


def cost(address: str, rounds: int) -> None:
    print("\n## What Ray costs: start-up and memory, --replicas 1 against no Ray", flush=True)
    children = _children()
    idle_ray = _pss_mb(_tree(os.getpid(), children) - {os.getpid()})
    order = [("plain", ()), ("ray", ("--ray", address, "--replicas", "1"))]
    memory: dict[str, tuple[float, float]] = {}
    for index in range(rounds):
        seconds = {}
        for label, flags in order if index % 2 == 0 else order[::-1]:
            began = time.perf_counter()
            with harness.lmserve(
                parallel=4, extra=["--sdk-port", "off", *flags], name=label
            ) as server:
                seconds[label] = time.perf_counter() - began
                memory[label] = _memory(server)
        print(
            f"round {index + 1}: start to ready, model loaded: no Ray {seconds['plain']:.1f} s, "
            f"--ray --replicas 1 {seconds['ray']:.1f} s",
            flush=True,
        )
    plain, _ = memory["plain"]
    server_mb, ray_mb = memory["ray"]
    print(
        f"memory (PSS): no Ray, server and engine {plain:.0f} MB; --ray, server "
        f"{server_mb:.0f} MB + Ray {ray_mb:.0f} MB (the idle 2-node cluster {idle_ray:.0f} MB, "
        f"then Serve and the replica with its engine {ray_mb - idle_ray:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=["throughput", "affinity", "cost"])
    args = parser.parse_args()
    with cluster() as address:
        if args.only == "cost":  # first: Serve not started yet, as a new server finds it
            cost(address, args.rounds)
        if args.only in (None, "throughput"):
            throughput(address, args.rounds)
        if args.only in (None, "affinity"):
            affinity(address, args.rounds)
        if args.only is None:
            cost(address, args.rounds)


if __name__ == "__main__":
    main()
