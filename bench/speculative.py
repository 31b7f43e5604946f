"""Speculative decoding by prompt lookup: decode speed with it (the server's ``auto``) and
without it (``"speculative": false``), on prompts whose answers repeat their input and on one
whose answer does not.

One server, temperature 0; the two settings alternate request by request, so the machine's
drifting speed weighs on both alike.  Speeds are the server's own decode tokens/s (after the
first token), from LM Studio's v0 stats, which also give the acceptance rate.  Then 8
concurrent clients, the same prompts, aggregate tokens/s with and without, alternated round
by round.  Targets (issue 16): >= 1.8x on the repeating prompts, >= 1.0x on the story, >=
0.98x at 8 clients.

``--model gemma`` serves Gemma 3 270M (a base model, Q4_K_M) instead of the default model
(Q4_1).  The quantization matters: llama.cpp's CPU backend has batched matrix kernels for
Q4_K (weights repacked at load) and none for Q4_1, so on the default model checking k drafted
tokens costs nearly k times one token's arithmetic, and on Gemma much less.

    python bench/speculative.py [--rounds 3] [--tokens 300] [--mode auto|on] [--load-only]
        [--model smollm2|gemma]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

CODE = """import math
from dataclasses import dataclass


@dataclass
class Circle:
    radius: float

    def area(self) -> float:
        return math.pi * self.radius ** 2

    def perimeter(self) -> float:
        return 2 * math.pi * self.radius


@dataclass
class Rectangle:
    width: float
    height: float

    def area(self) -> float:
        return self.width * self.height

    def perimeter(self) -> float:
        return 2 * (self.width + self.height)


@dataclass
class Triangle:
    a: float
    b: float
    c: float

    def area(self) -> float:
        s = (self.a + self.b + self.c) / 2
        return math.sqrt(s * (s - self.a) * (s - self.b) * (s - self.c))

    def perimeter(self) -> float:
        return self.a + self.b + self.c


def total_area(shapes: list) -> float:
    return sum(shape.area() for shape in shapes)


def largest(shapes: list):
    return max(shapes, key=lambda shape: shape.area())


def describe(shape) -> str:
    name = type(shape).__name__
    return f"{name} with area {shape.area():.2f} and perimeter {shape.perimeter():.2f}"


if __name__ == "__main__":
    shapes = [Circle(1.0), Rectangle(2.0, 3.0), Triangle(3.0, 4.0, 5.0)]
    for shape in shapes:
        print(describe(shape))
    print("total", total_area(shapes))
"""

DOCUMENT = (
    "Harbour notice, 14 March. The ferry Marigold, captained by Elena Varga, will leave "
    "Porthaven at 07:40 instead of 07:10 from Monday, because the northern pier is being "
    "repaired. Passengers with bicycles must board through the southern gate. The ticket "
    "office opens at 06:45 and accepts cash and cards. The return crossing from Kellis "
    "Island leaves at 18:20. During the repairs, the harbour café moves to the old customs "
    "house, next to the fish market. Questions go to the harbour master, Tomas Reyes, at "
    "the office above the chandlery."
)

SCHEMA = {
    "type": "object",
    "properties": {
        "ferry": {"type": "string"},
        "captain": {"type": "string"},
        "departure": {"type": "string"},
        "return_departure": {"type": "string"},
        "bicycle_gate": {"type": "string"},
        "harbour_master": {"type": "string"},
        "cafe_location": {"type": "string"},
    },
    "required": [
        "ferry",
        "captain",
        "departure",
        "return_departure",
        "bicycle_gate",
        "harbour_master",
        "cafe_location",
    ],
}

PROMPTS: dict[str, dict[str, Any]] = {
    "code edit": {
        "messages": [
            {
                "role": "user",
                "content": "Here is a Python file:\n\n```python\n"
                + CODE
                + "```\n\nRewrite the whole file with one change: rename the method "
                "`perimeter` to `circumference` in the Circle class only. Output the complete "
                "file.",
            }
        ]
    },
    "quote": {
        "messages": [
            {
                "role": "user",
                "content": f"{DOCUMENT}\n\n{DOCUMENT}\n\nQuote, word for word, every sentence "
                "of this notice that mentions a time.",
            }
        ]
    },
    "json from doc": {
        "messages": [
            {"role": "user", "content": f"{DOCUMENT}\n\nFill in the JSON form from the notice."}
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "notice", "schema": SCHEMA},
        },
    },
    "story": {"messages": [{"role": "user", "content": "Write a long story about a fox."}]},
}


def body(model: str, name: str, speculative: bool, tokens: int) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": model,
        "temperature": 0,
        "max_tokens": tokens,
        **PROMPTS[name],
    }
    if not speculative:
        request["speculative"] = False  # else the server's --speculative (auto) decides
    return request


async def one(client: httpx.AsyncClient, url: str, request: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(url + "/api/v0/chat/completions", json=request)
    response.raise_for_status()
    return response.json()


async def single_stream(server: harness.RunningServer, rounds: int, tokens: int, mode: str) -> None:
    print(f"single stream, temperature 0, up to {tokens} tokens, {rounds} alternated rounds")
    print(f"| prompt | tokens | off tok/s | {mode} tok/s | ratio | drafted | accepted |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    async with httpx.AsyncClient(timeout=900.0) as client:
        for name in PROMPTS:
            speeds: dict[bool, list[float]] = {False: [], True: []}
            drafted = accepted = produced = 0
            for round_ in range(rounds):
                order = (False, True) if round_ % 2 == 0 else (True, False)
                for speculative in order:
                    answer = await one(
                        client, server.base_url, body(server.model, name, speculative, tokens)
                    )
                    stats = answer["stats"]
                    speeds[speculative].append(stats["tokens_per_second"])
                    produced = stats["completion_tokens"]
                    if speculative:
                        drafted += stats.get("total_draft_tokens_count", 0)
                        accepted += stats.get("accepted_draft_tokens_count", 0)
            off, on = statistics.median(speeds[False]), statistics.median(speeds[True])
            rate = f"{accepted / drafted:.0%}" if drafted else "-"
            print(
                f"| {name} | {produced} | {off:.1f} | {on:.1f} | {on / off:.3f}x | "
                f"{drafted // rounds} | {rate} |"
            )


async def under_load(
    server: harness.RunningServer, rounds: int, tokens: int, clients: int, mode: str
) -> None:
    names = list(PROMPTS)
    figures: dict[bool, list[float]] = {False: [], True: []}
    async with httpx.AsyncClient(
        timeout=900.0, limits=httpx.Limits(max_connections=clients + 4)
    ) as client:
        for round_ in range(rounds):
            order = (False, True) if round_ % 2 == 0 else (True, False)
            for speculative in order:
                requests = [
                    body(server.model, names[i % len(names)], speculative, tokens)
                    for i in range(clients)
                ]
                started = time.perf_counter()
                answers = await asyncio.gather(
                    *(one(client, server.base_url, request) for request in requests)
                )
                wall = time.perf_counter() - started
                figures[speculative].append(
                    sum(answer["usage"]["completion_tokens"] for answer in answers) / wall
                )
    off, on = statistics.median(figures[False]), statistics.median(figures[True])
    print(f"\n{clients} clients, aggregate tok/s (request to last token), {rounds} rounds")
    rounded = {key: [round(value, 1) for value in values] for key, values in figures.items()}
    print(f"off: {rounded[False]}  {mode}: {rounded[True]}")
    print(f"| clients | off tok/s | {mode} tok/s | ratio |\n|---:|---:|---:|---:|")
    print(f"| {clients} | {off:.1f} | {on:.1f} | {on / off:.3f}x |")


async def main_async(
    rounds: int, tokens: int, clients: int, mode: str, single: bool, model: str
) -> None:
    with harness.lmserve(parallel=clients, extra=("--speculative", mode), model=model) as server:
        await harness.warm_up(server)
        if single:
            await single_stream(server, rounds, tokens, mode)
        await under_load(server, rounds, tokens, clients, mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--mode", choices=("auto", "on"), default="auto", help="the server's --speculative"
    )
    parser.add_argument("--load-only", action="store_true", help="skip the single stream")
    parser.add_argument(
        "--model",
        choices=sorted(harness.MODELS),
        default="smollm2",
        help="smollm2 (the default model, Q4_1) or gemma (Gemma 3 270M base, Q4_K_M)",
    )
    args = parser.parse_args()
    asyncio.run(
        main_async(
            args.rounds, args.tokens, args.clients, args.mode, not args.load_only, args.model
        )
    )


if __name__ == "__main__":
    main()
