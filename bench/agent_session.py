"""An agent session after a restart: Codex CLI's first two requests, cold and warm.

Codex CLI 0.171.0's first request (recorded in ``tests/data``: a ~9,000-token prompt of
instructions and tool definitions) and its second (the same history, the model's answer to
the first and a new user message, as Codex sends a session's next turn: ``store`` is false,
so the whole history goes again) go to lmserve and to llama-server on Gemma 3 270M, one
slot each.  Then both servers restart and the two requests go again: lmserve restores the
first from its prompt cache's files, llama-server (its prompt cache is in RAM only) reads it
again.  Printed: time to first output, per request, before and after the restart, and the
prompt's tokens (llama-server renders Codex's request into about half as many as lmserve
does, dropping part of it: compare each server with itself).

    python bench/agent_session.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import llama_server

RECORDED = Path(__file__).resolve().parent.parent / "tests" / "data" / "codex-0.171.0-request.json"
CONTEXT = 16384
NEW_TOKENS = 16
FOLLOW_UP = "Thanks. Now list the files in this folder."


def first_request(model: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(RECORDED.read_text())
    body.update(model=model, stream=True, max_output_tokens=NEW_TOKENS, temperature=0)
    return body


def second_request(first: dict[str, Any], answer: str) -> dict[str, Any]:
    body = copy.deepcopy(first)
    said = [{"type": "output_text", "text": answer}]
    asked = [{"type": "input_text", "text": FOLLOW_UP}]
    body["input"] += [
        {"type": "message", "role": "assistant", "content": said},
        {"type": "message", "role": "user", "content": asked},
    ]
    return body


def ask(server: harness.RunningServer, body: dict[str, Any]) -> tuple[float, str, int]:
    """Seconds to the first streamed output (text or a tool call's arguments), the text,
    and the prompt's tokens."""
    started = time.perf_counter()
    first = None
    text = []
    prompt_tokens = 0
    with httpx.stream(
        "POST", server.base_url + "/v1/responses", json=body, timeout=900.0
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            kind = str(event.get("type", ""))
            if kind.endswith(".delta"):
                first = first or time.perf_counter()
                if kind == "response.output_text.delta":
                    text.append(str(event.get("delta", "")))
            usage = (event.get("response") or {}).get("usage") or {}
            prompt_tokens = int(usage.get("input_tokens") or prompt_tokens)
    if first is None:
        raise RuntimeError(f"{server.name} streamed no output")
    return first - started, "".join(text), prompt_tokens


@contextlib.contextmanager
def both(binary: Path, home: Path) -> Iterator[list[harness.RunningServer]]:
    with (
        harness.lmserve(
            parallel=1,
            context_length=CONTEXT,
            model="gemma",
            home=home,
            extra=["--speculative", "off"],
        ) as ours,
        llama_server.running(binary, 1, CONTEXT, repack=True, model="gemma") as theirs,
    ):
        yield [ours, theirs]


def session(
    servers: list[harness.RunningServer], answers: list[str] | None
) -> tuple[list[list[float]], list[str]]:
    """Both requests on each server: seconds to first output per server and request, and
    each server's answer to the first.  The second request carries ``answers[server]`` when
    given (the first session's, so both sessions send the same bytes)."""
    figures: list[list[float]] = []
    given: list[str] = []
    for index, server in enumerate(servers):
        first = first_request(server.model)
        ttft_first, answer, tokens_first = ask(server, first)
        answer = answers[index] if answers is not None else answer
        ttft_second, _, tokens_second = ask(server, second_request(first, answer))
        figures.append([ttft_first, ttft_second, tokens_first, tokens_second])
        given.append(answer)
    return figures, given


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    binary = llama_server.build()
    rows: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="lmserve-bench-agent-") as folder:
            home = Path(folder)
            with both(binary, home) as servers:
                cold, answers = session(servers, None)
            with both(binary, home) as servers:  # both restarted
                warm, _ = session(servers, answers)
        for index, name in enumerate(("lmserve", "llama-server")):
            for request in (0, 1):
                rows.setdefault(f"{name} request {request + 1} tokens", []).append(
                    cold[index][2 + request]
                )
                rows.setdefault(f"{name} request {request + 1} before", []).append(
                    cold[index][request]
                )
                rows.setdefault(f"{name} request {request + 1} after", []).append(
                    warm[index][request]
                )
        figures = {k: round(v[-1], 3) for k, v in rows.items() if not k.endswith("tokens")}
        print(f"round {round_ + 1}: " + json.dumps(figures), flush=True)
    print(
        "\n| request | server | prompt tokens | first session s (cold) "
        "| after a restart s | after / cold |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for request in (1, 2):
        for name in ("lmserve", "llama-server"):
            before = statistics.median(rows[f"{name} request {request} before"])
            after = statistics.median(rows[f"{name} request {request} after"])
            tokens = int(rows[f"{name} request {request} tokens"][-1])
            print(
                f"| {request} | {name} | {tokens} | {before:.3f} | {after:.3f} "
                f"| {after / before:.3f}x |"
            )
    ours = statistics.median(rows["lmserve request 1 after"])
    cold_read = statistics.median(rows["lmserve request 1 before"])
    print()
    label = "first request after a restart, lmserve / its own cold read"
    harness.print_checks([(label, ours / cold_read, "<=", 0.1)])


if __name__ == "__main__":
    main()
