"""Speculative decoding by prompt lookup, with the real server and model.

The server drafts whenever the text offers a draft (``--speculative on``), so that every
request below really checks drafts; each request is compared with the same request sent with
``"speculative": false``.  Drafting must change nothing but speed: the same tokens greedily,
the same tokens for the same seed (each sampled token still takes one draw of the sampler's
random stream), the same grammar, penalties, stop strings, limits and log-probabilities.

One caveat is llama.cpp's, measured here: its CPU attention rounds differently when a step
holds several tokens of one sequence than when it holds one (logits differ by up to about
0.9): with flash attention on (llama.cpp's choice, the default) once the context passes 256
tokens, with it off at any context length.
So a long greedy answer may take the other branch where the model is nearly tied between two
tokens, as it may when the same prompt is read in different chunks; the comparisons below
allow exactly that and nothing else.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL_ID, Server, running_server

PASSAGE = (
    "The lighthouse keeper climbed the stairs at dusk, lit the great lamp, and wrote in his "
    "log that the sea was calm, the wind was from the west, and the supply boat was late."
)
CODE = "\n".join(f"def step_{i}(x):\n    return x * {i} + {i + 1}\n" for i in range(8))
COMMA = 28  # SmolLM2's token for ","
REPEATING = [
    f"Repeat this passage word for word:\n\n{PASSAGE}",
    f"Copy this code exactly, changing nothing:\n\n{CODE}",
    "List the numbers from 1 to 40, separated by commas.",
    f"Quote the first sentence of this text: {PASSAGE} {PASSAGE}",
]
OTHER = ["Tell me a short story about a fox.", "What is the capital of France?"]
WITH_LOGPROBS = {"logprobs": True, "top_logprobs": 5}


@pytest.fixture(scope="module")
def drafting(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[Server]:
    with running_server(
        tmp_path_factory, default_model_file, "--speculative", "on", "--parallel", "4"
    ) as server:
        yield server


@pytest.fixture()
def http(drafting: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=drafting.base_url, timeout=300.0) as client:
        yield client


def chat(http: httpx.Client, prompt: str, *, speculative: bool | None, **params: Any) -> dict:
    """A chat completion through LM Studio's v0 API, whose answer carries the draft stats."""
    body: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 120,
        **params,
    }
    if speculative is not None:
        body["speculative"] = speculative
    response = http.post("/api/v0/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def text(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


NEAR_TIE = 2.0  # nats: twice the largest logit difference measured between the two paths


def assert_same_tokens(drafted: dict, plain: dict) -> None:
    """The same tokens, or the same up to a point where ``plain`` was nearly tied between its
    own token and the one ``drafted`` took (both requests carry log-probabilities)."""
    ours = drafted["choices"][0]["logprobs"]["content"]
    theirs = plain["choices"][0]["logprobs"]["content"]
    for index, (mine, other) in enumerate(zip(ours, theirs, strict=False)):
        if mine["token"] != other["token"]:
            rivals = {rival["token"]: rival["logprob"] for rival in other["top_logprobs"]}
            assert mine["token"] in rivals, (index, mine, other)
            assert other["logprob"] - rivals[mine["token"]] < NEAR_TIE, (index, mine, other)
            return
    assert text(drafted) == text(plain)


def test_greedy_output_is_the_same_with_and_without_drafts(http: httpx.Client) -> None:
    accepted = 0
    for prompt in REPEATING + OTHER:
        plain = chat(http, prompt, speculative=False, **WITH_LOGPROBS)
        drafted = chat(http, prompt, speculative=None, **WITH_LOGPROBS)
        assert_same_tokens(drafted, plain)
        assert "total_draft_tokens_count" not in plain["stats"]
        stats = drafted["stats"]
        if prompt in REPEATING:
            assert stats["total_draft_tokens_count"] > 0, prompt
        accepted += stats["accepted_draft_tokens_count"]
    assert accepted > 20  # drafts of the repeating prompts were kept


def test_batched_drafting_gives_what_each_request_gives_alone(http: httpx.Client) -> None:
    prompts = REPEATING + OTHER
    alone = [chat(http, prompt, speculative=False, **WITH_LOGPROBS) for prompt in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(
            pool.map(lambda p: chat(http, p, speculative=None, **WITH_LOGPROBS), prompts)
        )
    for drafted, plain in zip(together, alone, strict=True):
        assert_same_tokens(drafted, plain)
    accepted = [answer["stats"]["accepted_draft_tokens_count"] for answer in together]
    print("accepted per prompt, batched:", accepted)
    # Which requests share a step depends on timing, and where a near tie takes the other
    # branch changes what repeats; each repeating answer still keeps some of its drafts.
    assert all(count > 0 for count in accepted[: len(REPEATING)]), accepted
    assert sum(accepted) > 20


def test_draft_stats_add_up(drafting: Server, http: httpx.Client) -> None:
    totals = {"total": 0, "accepted": 0, "rejected": 0, "ignored": 0}
    for prompt in REPEATING + OTHER:
        stats = chat(http, prompt, speculative=True, max_tokens=60)["stats"]
        counts = {name: stats[f"{name}_draft_tokens_count"] for name in totals}
        assert counts["accepted"] + counts["rejected"] + counts["ignored"] == counts["total"]
        for name in totals:
            totals[name] += counts[name]
    assert totals["accepted"] > 0 and totals["rejected"] > 0
    # A draft cut short by max_tokens or the end of the answer leaves tokens unchecked.
    assert totals["ignored"] > 0
    metrics = http.get("/metrics").text
    for outcome in ("accepted", "rejected", "ignored"):
        line = f'lmserve_draft_tokens_total{{model="{MODEL_ID}",outcome="{outcome}"}}'
        assert line in metrics


def test_the_same_seed_samples_the_same_tokens(http: httpx.Client) -> None:
    """A draft token is kept only if the sampler, drawing as it would without the draft,
    picks it; so the output distribution is unchanged, and a seed even gives the very same
    text.  The token frequencies over many seeds are compared too."""
    hot = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "max_tokens": 40}
    prompt = REPEATING[2]  # the numbers from 1 to 40: short, and it repeats as it goes
    plain_words: Counter[str] = Counter()
    drafted_words: Counter[str] = Counter()
    rejected = 0
    for seed in range(24):
        plain = chat(http, prompt, speculative=False, seed=seed, **hot)
        drafted = chat(http, prompt, speculative=True, seed=seed, **hot)
        assert text(drafted) == text(plain), seed
        rejected += drafted["stats"]["rejected_draft_tokens_count"]
        plain_words.update(text(plain).split())
        drafted_words.update(text(drafted).split())
    assert rejected > 0  # sampling disagreed with drafts, and the residual was drawn from
    assert drafted_words == plain_words
    assert len(plain_words) > 30  # sampled: the seeds gave many different texts


def test_grammar_penalties_stop_and_logprobs_behave_as_without_drafts(
    http: httpx.Client,
) -> None:
    # A stop string from the middle of the greedy answer.
    stop_word = text(chat(http, REPEATING[0], speculative=False)).split()[6]
    # A list of numbers: its ", " runs give prompt lookup something to draft from.
    schema = {"type": "array", "items": {"type": "integer"}}
    cases: list[dict[str, Any]] = [
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema},
            },
            "max_tokens": 150,
        },
        {"frequency_penalty": 1.0, "presence_penalty": 0.5, "repeat_penalty": 1.3},
        {"logit_bias": {str(COMMA): -100}},
        {"stop": [stop_word], "max_tokens": 150},
        {"max_tokens": 7},
        {"logprobs": True, "top_logprobs": 2, "max_tokens": 30},
    ]
    prompt = REPEATING[0]  # short enough for llama.cpp's two paths to agree bit for bit
    for params in cases:
        asked = REPEATING[2] if "response_format" in params else prompt  # a list of numbers
        plain = chat(http, asked, speculative=False, **params)
        drafted = chat(http, asked, speculative=True, **params)
        assert text(drafted) == text(plain), params
        assert drafted["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
        assert drafted["stats"]["total_draft_tokens_count"] > 0, params
        if "response_format" in params:
            numbers = json.loads(text(drafted))
            assert numbers and all(isinstance(number, int) for number in numbers)
        if "logprobs" in params:
            ours, theirs = drafted["choices"][0]["logprobs"], plain["choices"][0]["logprobs"]
            assert [t["token"] for t in ours["content"]] == [t["token"] for t in theirs["content"]]
            for mine, other in zip(ours["content"], theirs["content"], strict=True):
                assert abs(mine["logprob"] - other["logprob"]) < 1e-3
    stopped = chat(http, prompt, speculative=True, stop=[stop_word])
    assert stopped["stats"]["stop_reason"] == "stopStringFound"
