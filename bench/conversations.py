"""Several conversations over fewer slots, turns one at a time: lmserve against llama-server.

K conversations, each under its own ~1,050-token system prompt, take turns one at a time
(a user switching between chats, a host running several agents) against servers with 4
slots: SmolLM2-135M Q4_1, greedy, 24 new tokens a turn.  Both servers are up at once, built
on the same llama.cpp (``bench/llama_server.py``); each request goes to both, back to back,
the first of the pair alternating, so the machine's drift touches both alike.  Every round
writes new conversations, so each round starts cold.

With more conversations than slots, a turn's prefix is no longer in any slot: lmserve
restores it from its prompt cache, llama-server from its own (``--cache-ram``).  Target:
turns 2+ reach their first token in at most 1.0x llama-server's time, with 8 and with 32
conversations.

``--restart`` restarts both servers between turns: lmserve finds its prompt states on disk,
llama-server reads each prompt again (it keeps prompt states in RAM only).  Target: lmserve's
turns 2+ in at most 0.1x the time of that cold read.

    python bench/conversations.py [--conversations 8 32] [--rounds 2] [--restart]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import llama_server

SLOTS = 4
CONTEXT_PER_SLOT = 4096
NEW_TOKENS = 24
FACTS = [
    "The harbour opens at six and closes at dusk.",
    "Fresh bread is sold by the mill every morning except Sunday.",
    "The northern trail is steep and takes about three hours.",
    "Tide tables are posted outside the post office each week.",
    "The museum keeps a collection of old maps and ship models.",
    "Ferries leave twice a day when the sea is calm.",
    "The library lends books for three weeks at a time.",
    "A market fills the square on the first Saturday of each month.",
    "Visitors may borrow bicycles at the station for a small fee.",
    "The lighthouse can be climbed on summer afternoons.",
    "Storm warnings are announced by the church bell.",
    "The bakery's apple cake is the town's best-known treat.",
]
QUESTIONS = [
    "What should I see first?",
    "When can I take the ferry?",
    "Where do I buy bread?",
    "Is the trail hard?",
    "What is there to do when it rains?",
]


def system_prompt(round_: int, index: int) -> str:
    """A system prompt of about 1,050 tokens of its own: conversation ``index`` of round
    ``round_`` shares no more than the chat template's first tokens with any other."""
    shuffle = random.Random(round_ * 1000 + index)
    lines = [f"You are guide number {index} of round {round_} in a small harbour town."]
    for number in range(1, 75):
        lines.append(f"Note {number}: {shuffle.choice(FACTS)}")
    return "\n".join(lines)


@dataclass
class Turn:
    ttft: float
    prompt_tokens: int
    cached_tokens: int
    seconds: float


@dataclass
class Server:
    """One server's side of the run: its conversations and what each turn measured."""

    name: str
    conversations: list[list[dict[str, str]]] = field(default_factory=list)
    turns: dict[int, list[Turn]] = field(default_factory=dict)
    restores: list[dict[str, Any]] = field(default_factory=list)  # lmserve's cache stats


async def ask(
    client: httpx.AsyncClient, server: harness.RunningServer, messages: list[dict[str, str]]
) -> tuple[Turn, str]:
    body: dict[str, Any] = {
        "model": server.model,
        "messages": messages,
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # No end of turn: every answer has NEW_TOKENS tokens, on both servers.
        "logit_bias": {"0": -100, "2": -100},
    }
    started = time.perf_counter()
    first = None
    text = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    async for event in harness.chat_events(client, server.base_url, body):
        content = harness.delta_text(event)
        if content:
            first = first or time.perf_counter()
            text.append(content)
        usage = event.get("usage") or usage
        timings = event.get("timings") or timings
    ended = time.perf_counter()
    if first is None:
        raise RuntimeError(f"{server.name} streamed no content")
    prompt = int(usage.get("prompt_tokens") or 0)
    if timings:  # llama-server: tokens restored or kept (cache_n) and read (prompt_n)
        cached = int(timings.get("cache_n") or 0)
        prompt = prompt or cached + int(timings.get("prompt_n") or 0)
    else:
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return Turn(first - started, prompt, cached, ended - started), "".join(text)


@contextlib.contextmanager
def both_servers(binary: Path, home: Path) -> Iterator[list[harness.RunningServer]]:
    with (
        harness.lmserve(parallel=SLOTS, context_length=CONTEXT_PER_SLOT, home=home) as ours,
        llama_server.running(binary, SLOTS, CONTEXT_PER_SLOT, repack=True) as theirs,
    ):
        yield [ours, theirs]


async def run_turn(
    servers: list[harness.RunningServer], sides: list[Server], turn: int, round_: int
) -> None:
    limits = httpx.Limits(max_connections=4)
    async with (
        httpx.AsyncClient(timeout=600.0, limits=limits) as first,
        httpx.AsyncClient(timeout=600.0, limits=limits) as second,
    ):
        clients = [first, second]
        for index in range(len(sides[0].conversations)):
            order = [0, 1] if (index + turn + round_) % 2 == 0 else [1, 0]
            for which in order:
                side = sides[which]
                messages = side.conversations[index]
                messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
                result, answer = await ask(clients[which], servers[which], messages)
                messages.append({"role": "assistant", "content": answer})
                side.turns.setdefault(turn, []).append(result)


def run_round(
    binary: Path, home: Path, conversations: int, turns: int, round_: int, restart: bool
) -> list[Server]:
    sides = [Server("lmserve"), Server("llama-server")]
    for side in sides:
        side.conversations = [
            [{"role": "system", "content": system_prompt(round_, index)}]
            for index in range(conversations)
        ]
    restores: list[dict[str, Any]] = []
    if restart:
        for turn in range(turns):
            with both_servers(binary, home) as servers:
                asyncio.run(run_turn(servers, sides, turn, round_))
                restores.append(prompt_cache_stats(servers[0]))
    else:
        with both_servers(binary, home) as servers:
            for turn in range(turns):
                asyncio.run(run_turn(servers, sides, turn, round_))
            restores.append(prompt_cache_stats(servers[0]))
    sides[0].restores = restores
    return sides


def prompt_cache_stats(server: harness.RunningServer) -> dict[str, Any]:
    listing = httpx.get(server.base_url + "/lmserve/cache", timeout=30).json()
    return listing["models"][0]["prompt_cache"]  # type: ignore[no-any-return]


def where_restores_went(side: Server) -> str:
    """Restores' time, per restore and per 1,000 tokens, and what it was spent on."""
    hits = tokens = 0
    seconds = {"restore": 0.0, "read": 0.0, "assemble": 0.0, "set": 0.0}
    for stats in side.restores:
        for tier in ("memory", "disk"):
            hits += (stats.get(tier) or {}).get("hits", 0)
            tokens += (stats.get(tier) or {}).get("hit_tokens", 0)
        seconds["restore"] += stats["restore_seconds"]
        for part in ("read", "assemble", "set"):
            seconds[part] += stats[f"restore_{part}_seconds"]
    if not tokens:
        return "no restores"
    per_k = {name: 1000 * value / (tokens / 1000) for name, value in seconds.items()}
    return (
        f"{hits} restores of {tokens / max(1, hits):.0f} tokens on average: "
        f"{per_k['restore']:.1f} ms per 1,000 tokens in all (reading files "
        f"{per_k['read']:.1f}, putting the state together {per_k['assemble']:.1f}, "
        f"llama_state_seq_set_data {per_k['set']:.1f}; the rest finding the prefix)"
    )


def summarise(sides: list[Server], turns: list[int]) -> dict[str, float]:
    figures: dict[str, float] = {}
    for side in sides:
        results = [result for turn in turns for result in side.turns.get(turn, [])]
        prompt = sum(result.prompt_tokens for result in results)
        figures[side.name + " ttft"] = statistics.median(result.ttft for result in results)
        figures[side.name + " cached"] = (
            sum(result.cached_tokens for result in results) / prompt if prompt else 0.0
        )
        figures[side.name + " seconds"] = sum(result.seconds for result in results)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--restart", action="store_true", help="restart both servers between turns")
    args = parser.parse_args()
    binary = llama_server.build()
    target = 0.1 if args.restart else 1.0
    checks = []
    notes: list[str] = []
    print(
        f"{SLOTS} slots, {NEW_TOKENS} new tokens a turn, greedy; "
        + ("both servers restarted between turns" if args.restart else "servers kept up")
    )
    print(
        "\n| conversations | round | turns | lmserve TTFT s | llama-server TTFT s | ratio "
        "| lmserve cached | llama-server cached | lmserve s | llama-server s |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for conversations in args.conversations:
        ratios = []
        with tempfile.TemporaryDirectory(prefix="lmserve-bench-conversations-") as folder:
            home = Path(folder)
            for round_ in range(args.rounds):
                sides = run_round(binary, home, conversations, args.turns, round_, args.restart)
                for label, turns in (("1", [0]), ("2+", list(range(1, args.turns)))):
                    f = summarise(sides, turns)
                    ratio = f["lmserve ttft"] / f["llama-server ttft"]
                    if label == "2+":
                        ratios.append(ratio)
                    print(
                        f"| {conversations} | {round_ + 1} | {label} "
                        f"| {f['lmserve ttft']:.3f} | {f['llama-server ttft']:.3f} "
                        f"| {ratio:.3f}x | {f['lmserve cached']:.1%} "
                        f"| {f['llama-server cached']:.1%} | {f['lmserve seconds']:.1f} "
                        f"| {f['llama-server seconds']:.1f} |",
                        flush=True,
                    )
                notes.append(
                    f"{conversations} conversations, round {round_ + 1}: "
                    + where_restores_went(sides[0])
                )
        checks.append(
            (
                f"turns 2+ median TTFT, lmserve / llama-server, {conversations} conversations "
                f"(median of {len(ratios)} rounds)",
                statistics.median(ratios),
                "<=",
                target,
            )
        )
    print("\nWhere lmserve's restores went:")
    for line in notes:
        print("- " + line)
    print()
    harness.print_checks(checks)


if __name__ == "__main__":
    main()
