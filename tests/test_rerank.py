"""Reranking on the real server: a tiny Qwen3-type reranker (``tests/rerank_assets.py``), loaded
just in time beside the default chat model, through ``/v1/rerank`` and its other paths.

Its weights are random, so its scores mean nothing; the tests check that they are llama.cpp's
(llama-server's, recorded for this file), ordered, independent of a document's place and
neighbours, and that bad input is a 400 with the server serving on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL_ID, Server, install_default_model, run_cli, start_server
from tests.rerank_assets import write_reranker

RERANKER = "tiny-reranker"
QUERY = "Which one is about the sea?"
DOCUMENTS = [
    "The tide came in over the harbour wall.",
    "Bread rises best in a warm kitchen.",
    "yes",
    "The train left the mountain station at noon.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    install_default_model(home, default_model_file)
    write_reranker(home / "models" / "test" / "tiny-reranker-GGUF" / "tiny-reranker.gguf")
    started = start_server(home)
    try:
        yield started
    finally:
        started.stop()


def rerank(server: Server, path: str = "/v1/rerank", **fields: Any) -> httpx.Response:
    body = {"model": RERANKER, "query": QUERY, "documents": DOCUMENTS, **fields}
    return httpx.post(server.base_url + path, json=body, timeout=120)


def scores(answer: httpx.Response) -> dict[int, float]:
    assert answer.status_code == 200, answer.text
    return {r["index"]: r["relevance_score"] for r in answer.json()["results"]}


def test_scores_are_sorted_and_the_same_on_every_path(server: Server) -> None:
    answer = rerank(server)
    body = answer.json()
    assert body["model"] == RERANKER and body["object"] == "list"
    results = body["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    values = [r["relevance_score"] for r in results]
    assert values == sorted(values, reverse=True)
    assert len(set(values)) == 4  # different documents, different scores
    assert body["usage"]["prompt_tokens"] > 4 * len(QUERY.split())
    for path in ("/rerank", "/v2/rerank"):
        assert scores(rerank(server, path)) == pytest.approx(scores(answer), abs=1e-6)


# llama-server --reranking (llama-cpp-python 0.3.36's llama.cpp) on write_reranker(seed=0),
# one pair at a time, on this project's AMD EPYC: query, then (document, relevance_score).
LLAMA_SERVER = (
    "capital of France?",
    [
        ("Paris is the capital.", 0.767979324),
        ("a cat in the sun", 0.661082625),
        ("yes", 0.408248663),
        ("Berlin ünï ✓", 0.700393677),
    ],
)


def test_scores_are_llama_servers(server: Server) -> None:
    query, recorded = LLAMA_SERVER
    for document, score in recorded:  # alone, as llama-server scored them
        answer = rerank(server, query=query, documents=[document])
        assert scores(answer)[0] == pytest.approx(score, abs=1e-5)
    together = scores(rerank(server, query=query, documents=[d for d, _ in recorded]))
    assert [together[i] for i in range(4)] == pytest.approx([s for _, s in recorded], abs=2e-3)


def test_top_n_and_return_documents(server: Server) -> None:
    everything = rerank(server).json()["results"]
    best = rerank(server, top_n=2, return_documents=True).json()["results"]
    assert [r["index"] for r in best] == [r["index"] for r in everything[:2]]
    assert [r["document"]["text"] for r in best] == [DOCUMENTS[r["index"]] for r in best]
    objects = rerank(server, documents=[{"text": d} for d in DOCUMENTS]).json()["results"]
    assert {r["index"]: r["relevance_score"] for r in objects} == pytest.approx(
        {r["index"]: r["relevance_score"] for r in everything}, abs=1e-6
    )


def test_a_score_does_not_depend_on_place_or_neighbours(server: Server) -> None:
    base = scores(rerank(server))
    reversed_ = scores(rerank(server, documents=DOCUMENTS[::-1]))
    last = len(DOCUMENTS) - 1
    for index, value in base.items():
        assert reversed_[last - index] == pytest.approx(value, abs=2e-3)
    alone = [scores(rerank(server, documents=[d]))[0] for d in DOCUMENTS]
    assert alone == pytest.approx([base[i] for i in range(len(DOCUMENTS))], abs=2e-3)
    many = DOCUMENTS * 5  # several decodes of several pairs each
    repeated = scores(rerank(server, documents=many))
    for index, value in repeated.items():
        assert value == pytest.approx(base[index % len(DOCUMENTS)], abs=2e-3)


def test_counted_in_the_metrics(server: Server) -> None:
    def counted() -> int:
        text = httpx.get(server.base_url + "/metrics").text
        line = f'lmserve_reranked_documents_total{{model="{RERANKER}"}} '
        found = [row for row in text.splitlines() if row.startswith(line)]
        return int(float(found[0].split()[-1])) if found else 0

    before = counted()
    scores(rerank(server))
    assert counted() == before + len(DOCUMENTS)


def test_listed_as_a_reranker(server: Server) -> None:
    models = httpx.get(server.base_url + "/api/v0/models").json()["data"]
    kinds = {m["id"]: m["type"] for m in models}
    assert kinds[RERANKER] == "reranker" and kinds[MODEL_ID] == "llm"
    listed = run_cli(server.home, "ls")
    assert "reranker" in listed.stdout


@pytest.mark.parametrize(
    ("fields", "status", "code", "words"),
    [
        ({"model": MODEL_ID}, 400, "model_not_reranker", "not a reranker"),
        ({"documents": []}, 400, None, "documents"),
        ({"top_n": 0}, 400, None, "top_n"),
        ({"documents": ["x"] * 1025}, 400, None, "documents"),
        ({"query": ""}, 400, None, "query"),
        ({"documents": ["ok", "the sea " * 400]}, 400, "context_length_exceeded", "documents[1]"),
    ],
)
def test_bad_input_is_a_400_and_the_server_goes_on(
    server: Server, fields: dict[str, Any], status: int, code: str | None, words: str
) -> None:
    answer = rerank(server, **fields)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    assert words in error["message"] or words in str(error.get("param")), error
    assert scores(rerank(server))


def test_a_reranker_named_for_chat_or_embeddings_says_what_it_is(server: Server) -> None:
    chat = httpx.post(
        server.api_url + "/chat/completions",
        json={"model": RERANKER, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=120,
    )
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "model_is_reranker"
    embed = httpx.post(
        server.api_url + "/embeddings", json={"model": RERANKER, "input": "Hi"}, timeout=120
    )
    assert embed.status_code == 400 and "is a reranker" in embed.json()["error"]["message"]


def test_the_command_line_prints_best_first(server: Server) -> None:
    best = rerank(server).json()["results"][0]
    printed = run_cli(
        server.home, "rerank", "--port", str(server.port), "-m", RERANKER, QUERY, *DOCUMENTS
    )
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.strip().splitlines()
    assert "score" in lines[0] and DOCUMENTS[best["index"]] in lines[1]
    assert f"{best['relevance_score']:.4f}" in lines[1]
