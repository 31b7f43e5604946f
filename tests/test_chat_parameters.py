"""Every sampling parameter changes the result as specified (each test fails if it were ignored).

"Hot" settings (temperature 1.5, no truncation) make different seeds give different texts; a
parameter that should make sampling greedy must then make them all equal the greedy text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from lmserve.engine.llama import LlamaModel
from tests.conftest import MODEL_ID
from tests.helpers import vocabulary

POEM = "Write a short poem about the sea."
HOT = {"temperature": 1.5, "top_p": 1.0, "extra_body": {"top_k": 0, "min_p": 0.0}}


def ask(client: OpenAI, content: str = POEM, **params: Any) -> Any:
    params.setdefault("max_tokens", 24)
    return client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": content}], **params
    )


def text(client: OpenAI, content: str = POEM, **params: Any) -> str:
    return ask(client, content, **params).choices[0].message.content


def streamed_pieces(client: OpenAI, content: str = POEM, **params: Any) -> list[str]:
    params.setdefault("max_tokens", 24)
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": content}], stream=True, **params
    )
    return [
        chunk.choices[0].delta.content
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.content
    ]


def with_extra(base: dict[str, Any], **extra: Any) -> dict[str, Any]:
    merged = dict(base)
    merged["extra_body"] = {**base.get("extra_body", {}), **extra}
    return merged


@pytest.fixture(scope="module")
def tokenizer(default_model_file: Path) -> LlamaModel:
    return vocabulary(default_model_file)


@pytest.fixture(scope="module")
def greedy(server: Any) -> str:
    with OpenAI(base_url=server.api_url, api_key="x") as client:
        return text(client, temperature=0)


def test_hot_settings_vary_with_the_seed(client: OpenAI, greedy: str) -> None:
    outputs = {text(client, seed=seed, **HOT) for seed in (1, 2, 3)}
    assert len(outputs) > 1
    assert greedy not in outputs


def test_temperature_zero_ignores_the_seed(client: OpenAI, greedy: str) -> None:
    assert {text(client, temperature=0, seed=seed) for seed in (1, 2, 3)} == {greedy}


def test_top_k_one_is_greedy(client: OpenAI, greedy: str) -> None:
    params = with_extra(HOT, top_k=1)
    assert {text(client, seed=seed, **params) for seed in (1, 2, 3)} == {greedy}


def test_top_p_tiny_is_greedy(client: OpenAI, greedy: str) -> None:
    params = {**HOT, "top_p": 0.001}
    assert {text(client, seed=seed, **params) for seed in (1, 2, 3)} == {greedy}


def test_min_p_one_is_greedy(client: OpenAI, greedy: str) -> None:
    params = with_extra(HOT, min_p=1.0)
    assert {text(client, seed=seed, **params) for seed in (1, 2, 3)} == {greedy}


def test_seed_repeats_the_text(client: OpenAI) -> None:
    first = text(client, seed=1234, temperature=1.0, max_tokens=32)
    second = text(client, seed=1234, temperature=1.0, max_tokens=32)
    others = {text(client, seed=seed, temperature=1.0, max_tokens=32) for seed in (1, 2)}
    assert first == second
    assert others != {first}


def test_max_tokens_limits_the_completion(client: OpenAI) -> None:
    completion = ask(client, temperature=0, max_tokens=5)
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"
    newer = ask(client, temperature=0, max_tokens=None, max_completion_tokens=3)
    assert newer.usage.completion_tokens == 3


def test_stop_string_cuts_the_text(client: OpenAI) -> None:
    full = text(client, temperature=0, max_tokens=40)
    words = full.split()
    stop = words[len(words) // 2]
    cut = ask(client, temperature=0, max_tokens=40, stop=stop)
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    # With a list, the earliest match wins.
    later, earlier = words[-2], words[2]
    expected = full[: min(full.index(later), full.index(earlier))]
    assert text(client, temperature=0, max_tokens=40, stop=[later, earlier]) == expected


def test_stop_string_spanning_tokens_never_streams(client: OpenAI) -> None:
    pieces = streamed_pieces(client, temperature=0, max_tokens=40)
    # A stop string made of the end of one token and the start of the next.
    k = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and pieces[i + 1].strip())
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    full = "".join(pieces)
    cut = streamed_pieces(client, temperature=0, max_tokens=40, stop=[stop])
    assert "".join(cut) == full[: full.index(stop)]
    assert all(stop not in piece for piece in cut)


def test_logit_bias_minus_100_bans_the_token(client: OpenAI, tokenizer: LlamaModel) -> None:
    first_piece = streamed_pieces(client, temperature=0)[0]
    banned = tokenizer.tokenize(first_piece, add_special=False)
    assert len(banned) == 1
    pieces = streamed_pieces(client, temperature=0, logit_bias={str(banned[0]): -100})
    assert pieces[0] != first_piece


def test_logit_bias_plus_100_forces_the_token(client: OpenAI, tokenizer: LlamaModel) -> None:
    forced = tokenizer.tokenize(" banana", add_special=False)
    assert len(forced) == 1
    out = text(client, temperature=0.7, seed=5, max_tokens=4, logit_bias={str(forced[0]): 100})
    assert out.count("banana") == 4


PATTERN = "Count: one one one one one one one one one one"


@pytest.mark.parametrize(
    "penalty",
    [
        {"frequency_penalty": 1.5},
        {"presence_penalty": 1.5},
        {"extra_body": {"repeat_penalty": 1.5}},
    ],
    ids=["frequency_penalty", "presence_penalty", "repeat_penalty"],
)
def test_penalties_change_the_greedy_text(client: OpenAI, penalty: dict[str, Any]) -> None:
    neutral = {"repeat_penalty": 1.0}
    base = text(client, PATTERN, temperature=0, max_tokens=30, extra_body=neutral)
    params = {"extra_body": {**neutral, **penalty.pop("extra_body", {})}, **penalty}
    assert text(client, PATTERN, temperature=0, max_tokens=30, **params) != base


def test_a_repeat_penalty_too_small_for_float32_is_served(client: OpenAI) -> None:
    # Above 0, as the bound asks, but 0 in float32: a seen token's positive logit divides
    # by zero, which C makes +inf (so a token of the prompt comes next; often the turn's end
    # marker, which stops at once) and plain Python arithmetic would raise on.
    tiny = ask(client, PATTERN, temperature=0, max_tokens=8, extra_body={"repeat_penalty": 1e-50})
    assert tiny.choices[0].finish_reason in ("stop", "length")
    assert tiny.usage is not None and tiny.usage.completion_tokens >= 1
    assert text(client, PATTERN, temperature=0, max_tokens=8)  # and the model serves on


def test_messages_are_what_the_model_answers(client: OpenAI) -> None:
    a = text(client, "What is the capital of France?", temperature=0)
    b = text(client, "Name three fruits.", temperature=0)
    assert a != b


def test_n_gives_several_choices(client: OpenAI) -> None:
    completion = ask(client, n=3, seed=9, temperature=1.2, max_tokens=12)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in completion.choices}) > 1
    # Usage counts the tokens of every choice.
    assert 12 < completion.usage.completion_tokens <= 36


def test_unknown_fields_are_ignored(client: OpenAI) -> None:
    completion = ask(
        client,
        temperature=0,
        max_tokens=4,
        extra_body={"mirostat_mode": 2, "some_future_field": {"x": 1}},
    )
    assert completion.choices[0].message.content
