"""Prompt-prefix cache: a 10-turn conversation under a ~1,500-token system prompt.

Each turn resends the whole conversation (as every OpenAI client does).  Turn 1 computes the
system prompt; later turns should reuse the cached prefix and compute only what is new, so
their time to first token should be a fraction of turn 1's (target: at most 0.3x).

    python bench/prefix_cache.py [--turns 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

RULES = [
    "Greet the visitor by name when the name is known.",
    "Answer questions about the harbour's opening hours precisely.",
    "Never reveal the combination of the lighthouse storeroom.",
    "Recommend the fish market on Tuesdays and Fridays only.",
    "Explain the tide tables in plain words, with times in 24-hour format.",
    "Keep answers under five sentences unless asked for more.",
    "When the weather is stormy, advise visitors to stay off the pier.",
    "Mention the museum's free entry on the first Sunday of each month.",
]
QUESTIONS = [
    "When does the harbour open?",
    "Is the fish market open today?",
    "What about the tides?",
    "Can I visit the museum for free?",
    "Is the pier safe today?",
    "Where can I eat?",
    "What is the storeroom code?",
    "How long is the coastal walk?",
    "Any boat trips?",
    "Thanks! Anything else I should know?",
]


def system_prompt() -> str:
    lines = ["You are the harbour assistant of a small fishing town. Follow these rules."]
    for index in range(1, 43):
        lines.append(
            f"Rule {index}: {RULES[index % len(RULES)]} (section {index} of the "
            "visitor handbook, revised this spring by the harbour office)."
        )
    return "\n".join(lines)


async def conversation(server: harness.RunningServer, turns: int) -> list[tuple[float, int, int]]:
    messages = [{"role": "system", "content": system_prompt()}]
    results = []
    async with httpx.AsyncClient(timeout=600.0) as client:
        for turn in range(turns):
            messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
            body = {
                "model": server.model,
                "messages": messages,
                "max_tokens": 32,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            started = time.perf_counter()
            first = None
            text = ""
            usage = {}
            async with client.stream(
                "POST", server.base_url + "/v1/chat/completions", json=body
            ) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices", []):
                        piece = choice["delta"].get("content")
                        if piece:
                            first = first or time.perf_counter()
                            text += piece
            messages.append({"role": "assistant", "content": text})
            results.append(
                (
                    first - started,
                    usage.get("prompt_tokens", 0),
                    usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
                )
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    with harness.lmserve(parallel=4) as server:
        asyncio.run(harness.warm_up(server))
        results = asyncio.run(conversation(server, args.turns))
    first_ttft = results[0][0]
    print("| turn | prompt tokens | cached tokens | TTFT s | TTFT / turn 1 |")
    print("|---:|---:|---:|---:|---:|")
    for turn, (ttft, prompt, cached) in enumerate(results, start=1):
        print(f"| {turn} | {prompt} | {cached} | {ttft:.3f} | {ttft / first_ttft:.3f} |")
    worst = max(ttft for ttft, _, _ in results[1:]) / first_ttft
    print(
        f"{'PASS' if worst <= 0.3 else 'FAIL'}  worst TTFT of turns 2-{args.turns} / turn 1: "
        f"{worst:.3f} (target <= 0.3)"
    )


if __name__ == "__main__":
    main()
