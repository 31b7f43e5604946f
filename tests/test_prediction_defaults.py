"""Prediction defaults on the command line (`serve --temperature/--top-k/.../--stop/--seed`).

A request that leaves a sampling setting out gets the server's default for it, as with
llama-server's sampling flags; a request that sets it keeps its own value.  Each check below
would fail if the flag were ignored (LM Studio's defaults sample at 0.8 with a fresh seed, have
no stop strings and no token limit).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from lmserve.cli.serve import unescape
from tests.conftest import MODEL_ID, Server, running_server

POEM = "Write a short poem about the sea."
# Hot enough that different seeds give different texts.
HOT = {"temperature": 1.5, "top_p": 1.0, "extra_body": {"top_k": 0, "min_p": 0.0}}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    flags = ("--temperature", "0", "--max-tokens", "5", "--stop", r"\n", "--seed", "7")
    with running_server(tmp_path_factory, default_model_file, *flags) as server:
        yield server


@pytest.fixture()
def sdk(tuned: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=tuned.api_url, api_key="any", max_retries=0) as client:
        yield client


def ask(client: OpenAI, **params: Any) -> Any:
    answer = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": POEM}], **params
    )
    return answer.choices[0], answer.usage


def test_max_tokens_and_temperature_default_to_the_servers(sdk: OpenAI) -> None:
    (first, usage), (second, _) = ask(sdk), ask(sdk)
    assert first.finish_reason == "length" and usage.completion_tokens == 5
    assert first.message.content == second.message.content  # greedy: the same text every time
    greedy, _ = ask(sdk, temperature=0)
    assert first.message.content == greedy.message.content


def test_a_request_keeps_its_own_values(sdk: OpenAI) -> None:
    longer, usage = ask(sdk, max_tokens=60)
    assert usage.completion_tokens > 5
    assert longer.finish_reason == "stop" and "\n" not in longer.message.content  # --stop '\n'
    unstopped, _ = ask(sdk, max_tokens=60, stop=[])
    assert "\n" in unstopped.message.content.strip()
    assert unstopped.message.content.startswith(longer.message.content)


def test_the_seed_defaults_to_the_servers(sdk: OpenAI) -> None:
    texts = [ask(sdk, max_tokens=24, stop=[], **HOT)[0].message.content for _ in range(2)]
    assert texts[0] == texts[1]  # --seed 7 for both
    assert ask(sdk, max_tokens=24, stop=[], seed=7, **HOT)[0].message.content == texts[0]
    others = {ask(sdk, max_tokens=24, stop=[], seed=s, **HOT)[0].message.content for s in (8, 9)}
    assert others != {texts[0]}


def test_every_surface_gets_them(tuned: Server) -> None:
    """Anthropic's Messages: the server's stop string is reported as the one that matched."""
    answer = httpx.post(
        f"{tuned.base_url}/v1/messages",
        json={"model": MODEL_ID, "max_tokens": 60, "messages": [{"role": "user", "content": POEM}]},
        timeout=60,
    ).json()
    assert answer["stop_reason"] == "stop_sequence" and answer["stop_sequence"] == "\n"


def test_the_native_api_and_the_log_say_what_was_changed(tuned: Server) -> None:
    models = httpx.get(f"{tuned.base_url}/api/v1/models", timeout=10).json()["models"]
    (loaded,) = [m for m in models if m["loaded_instances"]]
    config = loaded["loaded_instances"][0]["config"]
    assert config["prediction_defaults"] == {
        "temperature": 0.0,
        "max_tokens": 5,
        "stop": ["\n"],
        "seed": 7,
    }
    assert "requests that leave them out get temperature=0.0" in tuned.log()


def test_stop_strings_are_read_with_backslash_escapes() -> None:
    assert unescape(r"\n") == "\n"
    assert unescape(r"a\tb") == "a\tb"
    assert unescape("<|im_end|>") == "<|im_end|>"
    assert unescape("é") == "é"
