"""Models as LM Studio names, types and loads them (issue 31, items 1-3).

LM Studio's SDK test suite asks for ``hugging-quants/llama-3.2-1b-instruct`` and
``nomic-ai/nomic-embed-text-v1.5`` and expects them loaded as ``llama-3.2-1b-instruct`` and
``text-embedding-nomic-embed-text-v1.5``; here the default model stands at the first's path
and a tiny BERT (:mod:`tests.embedding_assets`, which llama.cpp really loads) at the second's.
One server serves the module, with no model loaded at start: each test unloads what it
loaded.  The catalog's names are checked without a server, on the same layout.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import lmstudio as lms
import pytest
from lmstudio import LMStudioModelNotFoundError

from lmserve.models.catalog import Catalog
from tests.conftest import MODEL_ID, Server, install_default_model, run_cli, start_server
from tests.embedding_assets import CONTEXT, EMBED, write_embedding_model

LLM_PATH = "hugging-quants/Llama-3.2-1B-Instruct-Q4_1-GGUF/llama-3.2-1b-instruct-q4_1.gguf"
EMBEDDING_PATH = "nomic-ai/nomic-embed-text-v1.5-GGUF/nomic-embed-text-v1.5.F32.gguf"
LLM_KEY, LLM_QUERY = "llama-3.2-1b-instruct", "hugging-quants/llama-3.2-1b-instruct"
EMBEDDING_KEY = "text-embedding-nomic-embed-text-v1.5"
EMBEDDING_QUERY = "nomic-ai/nomic-embed-text-v1.5"


def make_home(home: Path, default_model_file: Path) -> Path:
    model = install_default_model(home, default_model_file)
    target = home / "models" / LLM_PATH
    target.parent.mkdir(parents=True)
    os.link(model, target)
    write_embedding_model(home / "models" / EMBEDDING_PATH)
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    home = make_home(tmp_path_factory.mktemp("home"), default_model_file)
    started = start_server(home, "--no-model", "--parallel", "1")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[lms.Client]:
    with lms.Client(f"127.0.0.1:{server.port}") as sdk:
        yield sdk
    unload_all(server)


def unload_all(server: Server) -> None:
    for model in loaded(server):
        answer = httpx.post(
            f"{server.base_url}/api/v1/models/unload", json={"instance_id": model}, timeout=60
        )
        answer.raise_for_status()


def loaded(server: Server) -> dict[str, dict[str, Any]]:
    models = httpx.get(f"{server.base_url}/api/v1/models", timeout=10).json()["models"]
    return {i["id"]: i["config"] for m in models for i in m["loaded_instances"]}


# -- the catalog ---------------------------------------------------------------------------


def test_keys_come_from_the_repository_as_lm_studio_names_them(
    tmp_path: Path, default_model_file: Path
) -> None:
    root = make_home(tmp_path, default_model_file) / "models"
    more = {
        "ZiangWu/MobileVLM_V2-1.7B-GGUF/ggml-model-q4_k.gguf": "mobilevlm_v2-1.7b",
        "other/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf": (
            "other/smollm2-135m-instruct"
        ),
        "mixed/Two-GGUF/alpha.Q4_1.gguf": "alpha",
        "mixed/Two-GGUF/beta.Q4_1.gguf": "beta",
    }
    for relative in more:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        os.link(default_model_file, root / relative)
    catalog = Catalog.scan(root)
    keys = {entry.relative_path: catalog.public_id(entry) for entry in catalog.entries}
    assert keys == {
        LLM_PATH: LLM_KEY,
        EMBEDDING_PATH: EMBEDDING_KEY,
        # Two publishers, one key: each is publisher/key, and the bare key the first.
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf": (
            "huggingfacetb/smollm2-135m-instruct"
        ),
        **more,
    }
    embedding = catalog.resolve(EMBEDDING_KEY)
    assert embedding is not None and embedding.model_type == "embeddings"
    for name, path in [
        (LLM_QUERY, LLM_PATH),
        (LLM_QUERY.upper(), LLM_PATH),
        (EMBEDDING_QUERY, EMBEDDING_PATH),
        (f"nomic-ai/{EMBEDDING_KEY}", EMBEDDING_PATH),
        ("nomic-embed-text-v1.5", EMBEDDING_PATH),  # lmserve's key from the file's name
        ("hugging-quants/Llama-3.2-1B-Instruct-Q4_1-GGUF", LLM_PATH),
        (LLM_PATH, LLM_PATH),
        ("ZiangWu/MobileVLM_V2-1.7B-GGUF", "ZiangWu/MobileVLM_V2-1.7B-GGUF/ggml-model-q4_k.gguf"),
        (MODEL_ID, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ]:
        entry = catalog.resolve(name)
        assert entry is not None and entry.relative_path == path, name


def test_lmserve_ls_shows_lm_studio_keys_and_types(
    tmp_path: Path, default_model_file: Path
) -> None:
    home = make_home(tmp_path, default_model_file)
    listed = run_cli(home, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["key"]: row["type"] for row in json.loads(listed.stdout)}
    assert rows == {MODEL_ID: "llm", LLM_KEY: "llm", EMBEDDING_KEY: "embeddings"}


# -- item 1: keys, identifiers and queries on every surface --------------------------------


def test_a_key_loads_under_lm_studios_identifier_and_every_query_finds_it(
    server: Server, client: lms.Client
) -> None:
    downloaded = {m.model_key: m.type for m in client.system.list_downloaded_models()}
    assert downloaded == {MODEL_ID: "llm", LLM_KEY: "llm", EMBEDDING_KEY: "embedding"}
    first = client.llm.load_new_instance(LLM_QUERY, ttl=None)
    second = client.llm.load_new_instance(LLM_QUERY)
    assert (first.identifier, second.identifier) == (LLM_KEY, f"{LLM_KEY}:2")
    assert client.llm.model(LLM_QUERY).identifier == LLM_KEY  # already loaded
    assert client.llm.get_model_info(LLM_QUERY).model_key == LLM_KEY
    for name in (LLM_QUERY, LLM_KEY, LLM_PATH):
        answer = httpx.post(
            f"{server.api_url}/chat/completions",
            json={"model": name, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
    assert set(loaded(server)) == {LLM_KEY, f"{LLM_KEY}:2"}
    listed = run_cli(server.home, "ps", "--json", "--port", str(server.port))
    rows = {m["identifier"]: m["model"] for m in json.loads(listed.stdout)}
    assert rows == {LLM_KEY: LLM_KEY, f"{LLM_KEY}:2": LLM_KEY}


# -- item 2: an embedding model is one everywhere -----------------------------------------


def test_an_embedding_model_is_typed_sized_and_tokenized_as_lm_studio_does(
    server: Server, client: lms.Client
) -> None:
    listed = client.embedding.list_downloaded()
    assert [(m.model_key, m.info.max_context_length) for m in listed] == [(EMBEDDING_KEY, CONTEXT)]
    assert all(m.type == "llm" for m in client.llm.list_downloaded())
    model = client.embedding.model(EMBEDDING_QUERY)
    assert model.identifier == EMBEDDING_KEY
    assert [m.identifier for m in client.embedding.list_loaded()] == [EMBEDDING_KEY]
    assert client.llm.list_loaded() == []
    assert model.get_context_length() == CONTEXT  # what it was trained on
    assert len(model.embed("Hello, world!")) == EMBED
    text = "Hello, world!"
    tokens = model.tokenize(text)
    assert len(tokens) == model.count_tokens(text) + 2  # [CLS] and [SEP] around it
    assert (tokens[0], tokens[-1]) == (2, 3)
    rest = httpx.post(
        f"{server.api_url}/embeddings", json={"model": EMBEDDING_KEY, "input": text}, timeout=60
    ).json()
    assert len(rest["data"][0]["embedding"]) == EMBED
    v0 = httpx.get(f"{server.base_url}/api/v0/models/{EMBEDDING_QUERY}", timeout=10).json()
    assert (v0["id"], v0["type"], v0["max_context_length"]) == (
        EMBEDDING_KEY,
        "embeddings",
        CONTEXT,
    )
    v1 = httpx.get(f"{server.base_url}/api/v1/models", timeout=10).json()["models"]
    assert {m["key"]: m["type"] for m in v1}[EMBEDDING_KEY] == "embedding"


# -- item 3: JIT auto-evict -----------------------------------------------------------------


def test_a_jit_load_unloads_the_jit_models_before_it(
    server: Server, client: lms.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK suite's ``test_jit_unloading``: across namespaces, with the SDK's log lines."""
    caplog.set_level(logging.DEBUG)
    kept = client.llm.load_new_instance(LLM_QUERY, ttl=None)  # explicit: never evicted
    embedding = client.embedding.model(EMBEDDING_QUERY, ttl=300)
    assert embedding.get_info().identifier == EMBEDDING_KEY
    small = client.llm.model(MODEL_ID, ttl=300)
    assert small.get_info().identifier == MODEL_ID
    with pytest.raises(LMStudioModelNotFoundError):
        embedding.get_info()
    notices = [
        (level, message)
        for _, level, message in caplog.record_tuples
        if "Unloading other JIT model" in message
    ]
    assert [level for level, _ in notices] == [logging.INFO, logging.DEBUG]
    assert f'"unloaded_model_key": "{EMBEDDING_KEY}"' in notices[0][1]
    assert f'"model_key": "{MODEL_ID}"' in notices[0][1]
    assert set(loaded(server)) == {kept.identifier, MODEL_ID}
    assert loaded(server)[MODEL_ID]["jit"] is True
    # A REST request that loads a model just in time does the same.
    answer = httpx.post(
        f"{server.api_url}/embeddings", json={"model": EMBEDDING_KEY, "input": "x"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert set(loaded(server)) == {kept.identifier, EMBEDDING_KEY}
    assert f"evicting {MODEL_ID}: {EMBEDDING_PATH} is loaded just in time" in server.log()


def test_without_auto_evict_jit_models_stay(tmp_path: Path, default_model_file: Path) -> None:
    home = make_home(tmp_path / "home", default_model_file)
    server = start_server(home, "--no-model", "--parallel", "1", "--no-jit-auto-evict")
    try:
        for name in (EMBEDDING_QUERY, MODEL_ID):
            answer = httpx.post(
                f"{server.api_url}/embeddings", json={"model": name, "input": "x"}, timeout=60
            )
            assert answer.status_code == 200, answer.text
        assert set(loaded(server)) == {EMBEDDING_KEY, MODEL_ID}
    finally:
        server.stop()
