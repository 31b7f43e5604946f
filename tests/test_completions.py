"""/v1/completions: a raw prompt, no template, with the official SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.conftest import MODEL_ID
from tests.helpers import vocabulary


def test_raw_prompt_continues_the_text(client: OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].text.strip().startswith("5")
    assert completion.usage.completion_tokens == 6


def test_default_max_tokens_is_openais_16(client: OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID, prompt="Once upon a time", extra_body={"logit_bias": {"0": -100, "2": -100}}
    )
    assert completion.usage.completion_tokens == 16


def test_echo_and_stop(client: OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID, prompt="1, 2, 3,", max_tokens=12, temperature=0, echo=True, stop=[" 6"]
    )
    text = completion.choices[0].text
    assert text.startswith("1, 2, 3,")
    assert " 6" not in text and "5" in text


def test_several_prompts_and_n(client: OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID, prompt=["Red,", "One,"], n=2, max_tokens=3, temperature=1.0, seed=3
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert (
        completion.usage.completion_tokens == sum(1 for _ in completion.choices) * 3
        or completion.usage.completion_tokens <= 12
    )


def test_token_prompt(client: OpenAI, default_model_file: Path) -> None:
    tokens = vocabulary(default_model_file).tokenize("1, 2, 3,", add_special=False)
    by_tokens = client.completions.create(
        model=MODEL_ID, prompt=tokens, max_tokens=4, temperature=0
    )
    by_text = client.completions.create(
        model=MODEL_ID, prompt="1, 2, 3,", max_tokens=4, temperature=0
    )
    assert by_tokens.choices[0].text == by_text.choices[0].text
    assert by_tokens.usage.prompt_tokens == len(tokens)


def test_streaming_equals_non_streaming(client: OpenAI) -> None:
    params = {"model": MODEL_ID, "prompt": "The moon is", "max_tokens": 20, "seed": 5}
    whole = client.completions.create(**params).choices[0].text
    pieces = [
        c.choices[0].text for c in client.completions.create(**params, stream=True) if c.choices
    ]
    assert "".join(pieces) == whole and len(pieces) > 5


def test_suffix_needs_fill_in_the_middle_tokens(client: OpenAI, default_model_file: Path) -> None:
    # SmolLM2's vocabulary has no FIM tokens: a suffix is refused, not silently dropped.
    assert vocabulary(default_model_file).fim_tokens() is None
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.completions.create(
            model=MODEL_ID,
            prompt="def add(a, b):\n    return ",
            suffix="\nprint(add(1, 2))",
            max_tokens=5,
        )
