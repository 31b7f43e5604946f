"""Draft models (LM Studio's ``draft_model``), with the real server and real models.

No second model with SmolLM2's vocabulary is published on PyPI, so the drafts are made from
the default model here: the same file under another name (its drafts are nearly always
right) and a copy requantized to Q4_0 with llama.cpp's own quantizer (close, but it drafts
wrong tokens too: real rejections).  Gemma 3 has another vocabulary: refused with a 400.

A draft as big as the model never pays, so the server would rarely use these on its own
(``auto``); the requests say ``"speculative": true`` to draft whenever they can.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import lmstudio as lms
import pytest

from lmserve.models.default import GEMMA3_270M
from tests.conftest import (
    GEMMA_ID,
    MODEL_ID,
    Server,
    install_default_model,
    install_model,
    run_cli,
    start_server,
)
from tests.test_speculative import PASSAGE, WITH_LOGPROBS, assert_same_tokens, text

SAME = "smollm2-draft"
REQUANTIZED = "smollm2-requantized"
PROMPTS = [
    f"Repeat this passage word for word:\n\n{PASSAGE}",
    "Write a haiku about autumn.",
    "Explain in two sentences why the sky is blue.",
]


def requantize(source: Path, target: Path) -> None:
    """``source`` written again as Q4_0 by llama.cpp's quantizer (from its Q4_1 weights)."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 2
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    assert status == 0, f"llama_model_quantize failed ({status})"


def add_model(home: Path, source: Path, name: str) -> None:
    folder = home / "models" / "lmserve-tests" / f"{name}-GGUF"
    folder.mkdir(parents=True, exist_ok=True)
    os.link(source, folder / f"{name}.gguf")


@pytest.fixture(scope="module")
def drafts_server(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path, gemma_model_file: Path
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    model = install_default_model(home, default_model_file)
    add_model(home, model, SAME)
    requantized = tmp_path_factory.mktemp("requantized") / "model.gguf"
    requantize(model, requantized)
    add_model(home, requantized, REQUANTIZED)
    install_model(home, gemma_model_file, GEMMA3_270M)
    server = start_server(home, "--parallel", "4")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def http(drafts_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=drafts_server.base_url, timeout=300.0) as client:
        yield client


def chat(http: httpx.Client, prompt: str, **params: Any) -> dict:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 80,
        **WITH_LOGPROBS,
        **params,
    }
    response = http.post("/api/v0/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def draft_id(http: httpx.Client, name: str) -> str:
    ids = [model["id"] for model in http.get("/api/v0/models").json()["data"]]
    return next(identifier for identifier in ids if name in identifier)


def test_a_draft_model_of_the_same_weights_is_nearly_always_right(http: httpx.Client) -> None:
    draft = draft_id(http, SAME)
    accepted = total = 0
    unpenalised = {"repeat_penalty": 1.0}  # the draft picks greedily, without penalties
    for prompt in PROMPTS:
        plain = chat(http, prompt, speculative=False, **unpenalised)
        drafted = chat(http, prompt, draft_model=draft, speculative=True, **unpenalised)
        assert_same_tokens(drafted, plain)
        stats = drafted["stats"]
        assert stats["draft_model"] == draft
        counts = [
            stats[f"{kind}_draft_tokens_count"] for kind in ("accepted", "rejected", "ignored")
        ]
        assert sum(counts) == stats["total_draft_tokens_count"]
        accepted += stats["accepted_draft_tokens_count"]
        total += stats["total_draft_tokens_count"]
    assert total > 50 and accepted / total > 0.9


def test_a_requantized_draft_is_checked_token_by_token(http: httpx.Client) -> None:
    draft = draft_id(http, REQUANTIZED)
    rejected = 0
    for prompt in PROMPTS:
        plain = chat(http, prompt, speculative=False)
        drafted = chat(http, prompt, draft_model=draft, speculative=True)
        assert_same_tokens(drafted, plain)
        stats = drafted["stats"]
        assert stats["draft_model"] == draft and stats["accepted_draft_tokens_count"] > 0
        rejected += stats["rejected_draft_tokens_count"]
    assert rejected > 0  # the requantized draft guessed wrong, and the target's token won


def test_batched_requests_with_a_draft_model(http: httpx.Client) -> None:
    draft = draft_id(http, REQUANTIZED)
    alone = [chat(http, prompt, speculative=False) for prompt in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(
            pool.map(lambda p: chat(http, p, draft_model=draft, speculative=True), PROMPTS)
        )
    for drafted, plain in zip(together, alone, strict=True):
        assert_same_tokens(drafted, plain)
        assert drafted["stats"]["total_draft_tokens_count"] > 0


def test_a_draft_model_of_another_vocabulary_is_a_clear_400(
    http: httpx.Client, drafts_server: Server
) -> None:
    for route, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/v1/completions", {"prompt": "Hi"}),
        ("/v1/responses", {"input": "Hi"}),
    ):
        response = http.post(route, json={"model": MODEL_ID, "draft_model": GEMMA_ID, **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "draft_model" and error["code"] == "draft_model_incompatible"
        assert "vocabulary" in error["message"]
    missing = http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL_ID,
            "draft_model": "no-such-model",
            "messages": [{"role": "user", "content": "Hi"}],
        },
    )
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "draft_model_not_found"
    assert text(chat(http, "Say hello.", max_tokens=5))  # still serving


def test_load_with_a_draft_model_drafts_for_every_request(
    http: httpx.Client, drafts_server: Server
) -> None:
    draft = draft_id(http, SAME)
    loaded = run_cli(
        drafts_server.home,
        "load",
        MODEL_ID,
        "-y",
        "--identifier",
        "drafted",
        "--draft-model",
        draft,
        "--port",
        str(drafts_server.port),
    )
    assert loaded.returncode == 0, loaded.stderr
    assert f"Draft model: {draft}." in loaded.stdout
    models = http.get("/api/v1/models").json()["models"]
    instances = [i for m in models for i in m.get("loaded_instances", [])]
    assert any(i["id"] == "drafted" and i["config"]["draft_model"] == draft for i in instances)
    # No draft_model in the request: the one it was loaded with.
    stats = chat(http, PROMPTS[0], model="drafted", speculative=True)["stats"]
    assert stats["draft_model"] == draft and stats["accepted_draft_tokens_count"] > 0


def test_lm_studio_sdk_predicts_with_a_draft_model(
    http: httpx.Client, drafts_server: Server
) -> None:
    """LM Studio's Python SDK: ``draftModel`` in the prediction config, and its stats."""
    draft = draft_id(http, REQUANTIZED)
    with lms.Client(f"127.0.0.1:{drafts_server.port}") as sdk:
        model = sdk.llm.model(MODEL_ID)
        config = {"temperature": 0.0, "maxTokens": 60, "draftModel": draft}
        result = model.respond(PROMPTS[0], config=config)
    stats = result.stats
    assert stats.used_draft_model_key == draft
    assert stats.total_draft_tokens_count and stats.accepted_draft_tokens_count
    counted = (
        stats.accepted_draft_tokens_count
        + (stats.rejected_draft_tokens_count or 0)
        + (stats.ignored_draft_tokens_count or 0)
    )
    assert counted == stats.total_draft_tokens_count
