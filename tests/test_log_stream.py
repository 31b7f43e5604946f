"""`lmserve log stream` shows the exact rendered prompt of a request, live."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from queue import Empty, Queue

from openai import OpenAI

from tests.conftest import MODEL_ID, Server


def _follow(process: subprocess.Popen[str], lines: Queue[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)


def _read_until(lines: Queue[str], predicate, timeout: float = 30.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen += lines.get(timeout=0.2)
        except Empty:
            continue
        if predicate(seen):
            return seen
    raise AssertionError(f"log stream never showed what was expected; got:\n{seen}")


def _start(server: Server, *flags: str) -> tuple[subprocess.Popen[str], Queue[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "lmserve", "log", "stream", "--port", str(server.port), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server.env(),
    )
    assert process.stderr is not None
    assert "Streaming logs" in process.stderr.readline()  # subscribed before we ask
    lines: Queue[str] = Queue()
    threading.Thread(target=_follow, args=(process, lines), daemon=True).start()
    return process, lines


def test_log_stream_shows_the_rendered_chatml_prompt(server: Server, client: OpenAI) -> None:
    process, lines = _start(server, "--stats")
    try:
        completion = client.chat.completions.create(
            model=MODEL_ID,
            messages=[
                {"role": "system", "content": "Always answer in rhymes."},
                {"role": "user", "content": "Introduce yourself."},
            ],
            max_tokens=12,
            temperature=0,
        )
        expected_prompt = (
            "<|im_start|>system\nAlways answer in rhymes.<|im_end|>\n"
            "<|im_start|>user\nIntroduce yourself.<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        answer = completion.choices[0].message.content
        seen = _read_until(lines, lambda text: answer in text and "stats:" in text)
        assert expected_prompt in seen
        assert "type: llm.prediction.input" in seen
        assert "type: llm.prediction.output" in seen
        assert f"promptTokens: {completion.usage.prompt_tokens}" in seen
        assert "stop_reason=maxPredictedTokensReached" in seen
    finally:
        process.terminate()
        process.wait(10)


def test_log_stream_json_records(server: Server, client: OpenAI) -> None:
    process, lines = _start(server, "--json")
    try:
        completion = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Say yes."}], max_tokens=3
        )
        seen = _read_until(lines, lambda text: "llm.prediction.output" in text)
        records = [json.loads(line) for line in seen.splitlines()]
        prompt_record = next(r for r in records if r["type"] == "llm.prediction.input")
        assert prompt_record["prompt"].endswith(
            "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n"
        )
        # No system message given: SmolLM2's template inserts its own default one.
        assert prompt_record["prompt"].startswith("<|im_start|>system\nYou are a helpful")
        output = next(r for r in records if r["type"] == "llm.prediction.output")
        assert output["output"] == completion.choices[0].message.content
        assert output["stats"]["completion_tokens"] == completion.usage.completion_tokens
        assert output["stats"]["time_to_first_token"] > 0
    finally:
        process.terminate()
        process.wait(10)


def test_log_stream_shows_how_far_a_long_prompt_has_been_read(
    server: Server, client: OpenAI
) -> None:
    process, lines = _start(server)
    try:
        long_prompt = f"{uuid.uuid4()} " + "The tide comes in and the tide goes out. " * 200
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": long_prompt}], max_tokens=2
        )
        seen = _read_until(lines, lambda text: "llm.prediction.output" in text)
        shown = re.findall(r"promptProcessing: (\d+)% \((\d+) of (\d+) tokens\)", seen)
        assert len(shown) >= 2
        read = [int(processed) for _, processed, _ in shown]
        assert read == sorted(read) and int(shown[-1][1]) < int(shown[-1][2])
    finally:
        process.terminate()
        process.wait(10)


def test_log_stream_without_server_says_how_to_start_it(server: Server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lmserve", "log", "stream", "--port", "1"],
        capture_output=True,
        text=True,
        env=server.env(),
        timeout=30,
    )
    assert result.returncode != 0
    assert "lmserve serve" in result.stderr
    assert "Traceback" not in result.stderr
