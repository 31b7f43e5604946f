"""Several models in one server: JIT loading, idle TTL, eviction, bad model files."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from lmserve.models.default import GEMMA3_270M
from tests.conftest import (
    GEMMA_ID,
    MODEL_ID,
    Server,
    install_default_model,
    install_model,
    start_server,
)

COPY_ID = "smol-copy"


def make_home(tmp_path: Path, default_model_file: Path, gemma_model_file: Path) -> Path:
    home = tmp_path / "home"
    install_default_model(home, default_model_file)
    install_model(home, gemma_model_file, GEMMA3_270M)
    # A third catalog entry (the default model's bytes under another name) for eviction.
    copy = home / "models" / "local" / "smol-copy-GGUF" / "smol-copy.Q4_1.gguf"
    copy.parent.mkdir(parents=True)
    os.link(default_model_file, copy)
    return home


@pytest.fixture()
def server_with(tmp_path: Path, default_model_file: Path, gemma_model_file: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(*args: str) -> Server:
        server = start_server(make_home(tmp_path, default_model_file, gemma_model_file), *args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def loaded(server: Server) -> dict[str, dict[str, Any]]:
    models = httpx.get(f"{server.base_url}/api/v1/models").json()["models"]
    return {
        instance["id"]: {"key": model["key"], **instance["config"]}
        for model in models
        for instance in model["loaded_instances"]
    }


def ask(server: Server, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{server.api_url}/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4,
            **extra,
        },
        timeout=120,
    )


def test_models_list_includes_downloaded_models_when_jit_is_on(server_with: Any) -> None:
    server = server_with()
    ids = {model.id for model in OpenAI(base_url=server.api_url, api_key="x").models.list()}
    assert ids == {MODEL_ID, GEMMA_ID, COPY_ID}
    assert list(loaded(server)) == [MODEL_ID]


def test_jit_loads_on_first_request_exactly_once(server_with: Any) -> None:
    server = server_with()

    async def many() -> list[str]:
        async with AsyncOpenAI(base_url=server.api_url, api_key="x") as client:
            completions = await asyncio.gather(
                *(
                    client.completions.create(
                        model=GEMMA_ID, prompt="Once upon a time", max_tokens=4
                    )
                    for _ in range(4)
                )
            )
        return [completion.model for completion in completions]

    assert asyncio.run(many()) == [GEMMA_ID] * 4
    instances = loaded(server)
    assert set(instances) == {MODEL_ID, GEMMA_ID}
    assert instances[GEMMA_ID]["jit"] is True
    assert instances[GEMMA_ID]["ttl"] == 3600  # LM Studio's JIT default
    assert server.log().count(f"loaded {GEMMA_ID} ") == 1


def test_two_models_answer_at_the_same_time(server_with: Any) -> None:
    server = server_with()

    async def both() -> list[Any]:
        async with AsyncOpenAI(base_url=server.api_url, api_key="x") as client:
            return await asyncio.gather(
                client.chat.completions.create(
                    model=MODEL_ID,
                    max_tokens=24,
                    messages=[{"role": "user", "content": "Describe the sea."}],
                ),
                client.completions.create(model=GEMMA_ID, prompt="The sea is", max_tokens=24),
            )

    smol, gemma = asyncio.run(both())
    assert smol.model == MODEL_ID and smol.choices[0].message.content
    assert gemma.model == GEMMA_ID and gemma.choices[0].text
    assert smol.usage.completion_tokens > 0 and gemma.usage.completion_tokens > 0


def test_idle_ttl_unloads_the_model(server_with: Any) -> None:
    server = server_with()
    assert ask(server, GEMMA_ID, ttl=2).status_code == 200
    assert loaded(server)[GEMMA_ID]["ttl"] == 2
    deadline = time.monotonic() + 15
    while GEMMA_ID in loaded(server) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert GEMMA_ID not in loaded(server)
    assert MODEL_ID in loaded(server)  # explicitly loaded: no TTL
    assert "idle for its TTL" in server.log()
    assert ask(server, GEMMA_ID).status_code == 200  # and it comes back on demand


def test_explicit_load_ttl_and_identifier(server_with: Any) -> None:
    server = server_with()
    response = httpx.post(
        f"{server.base_url}/api/v1/models/load",
        timeout=120,
        json={"model": GEMMA_ID, "config": {"ttl": 1.5, "identifier": "g"}},
    )
    assert response.status_code == 200
    assert response.json()["model_instance_id"] == "g"
    deadline = time.monotonic() + 15
    while "g" in loaded(server) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert "g" not in loaded(server)


def test_least_recently_used_jit_model_is_evicted(server_with: Any) -> None:
    server = server_with("--max-loaded-models", "2")
    assert ask(server, GEMMA_ID).status_code == 200
    assert set(loaded(server)) == {MODEL_ID, GEMMA_ID}
    assert ask(server, COPY_ID).status_code == 200
    # The startup model was loaded explicitly, so the JIT-loaded one made room.
    assert set(loaded(server)) == {MODEL_ID, COPY_ID}
    assert f"evicting {GEMMA_ID}" in server.log()


def test_a_generating_model_is_never_evicted(server_with: Any) -> None:
    server = server_with("--max-loaded-models", "2")
    assert ask(server, COPY_ID).status_code == 200

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {
                "model": COPY_ID,
                "stream": True,
                "max_tokens": 400,
                "messages": [{"role": "user", "content": "Count to a thousand."}],
                "logit_bias": {"2": -100, "0": -100},
            }
            async with client.stream(
                "POST", f"{server.api_url}/chat/completions", json=body
            ) as stream:
                lines = stream.aiter_lines()
                await lines.__anext__()  # generating now
                refused = await client.post(
                    f"{server.api_url}/chat/completions",
                    json={
                        "model": GEMMA_ID,
                        "max_tokens": 2,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                )
                rest = [line async for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the running stream was not cut
        return refused

    refused = asyncio.run(scenario())
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_capacity"
    assert set(loaded(server)) == {MODEL_ID, COPY_ID}
    assert ask(server, GEMMA_ID).status_code == 200  # idle again: now it can make room


def test_a_jit_load_takes_the_context_its_prompt_needs(server_with: Any) -> None:
    server = server_with("--context-length", "1024")
    long_prompt = [{"role": "user", "content": "The tide comes in and the tide goes out. " * 150}]
    # Loaded at start, with the context the server was told: the prompt does not fit.
    explicit = ask(server, MODEL_ID, messages=long_prompt)
    assert explicit.status_code == 400, explicit.text
    assert explicit.json()["error"]["code"] == "context_length_exceeded"
    # Loaded just in time for it: loaded again with a context that holds it and an answer.
    answered = ask(server, COPY_ID, messages=long_prompt)
    assert answered.status_code == 200, answered.text
    prompt_tokens = answered.json()["usage"]["prompt_tokens"]
    assert prompt_tokens > 1024
    context = loaded(server)[COPY_ID]["context_length"]
    assert prompt_tokens + 1024 <= context < 8192 and context % 1024 == 0
    assert f"loading {COPY_ID} again with {context} tokens per slot" in server.log()
    # Beyond what the model was trained on (8,192 tokens), no context would hold it.
    too_long = ask(server, COPY_ID, messages=[{"role": "user", "content": "tide " * 9000}])
    assert too_long.status_code == 400
    assert "trained on 8192 tokens" in too_long.json()["error"]["message"]
    assert loaded(server)[COPY_ID]["context_length"] == context


def test_without_jit_only_loaded_models_are_listed_and_served(server_with: Any) -> None:
    server = server_with("--no-jit")
    ids = {model.id for model in OpenAI(base_url=server.api_url, api_key="x").models.list()}
    assert ids == {MODEL_ID}
    response = ask(server, GEMMA_ID)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_corrupt_model_file_gives_a_clear_error_and_serving_goes_on(
    server_with: Any, tmp_path: Path, default_model_file: Path
) -> None:
    server = server_with()
    broken = server.home / "models" / "local" / "broken-GGUF" / "broken.Q4_1.gguf"
    broken.parent.mkdir(parents=True)
    with default_model_file.open("rb") as source:
        broken.write_bytes(source.read(12_000_000))  # a good header, then cut short
    response = ask(server, "broken")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "model_load_failed" and "broken" in error["message"]
    assert str(server.home) not in error["message"]
    assert ask(server, MODEL_ID).status_code == 200


def _patched(data: bytes, marker: bytes, skip: int, value: bytes) -> bytes:
    """``data`` with ``value`` written ``skip`` bytes after the end of ``marker``."""
    at = data.index(marker) + len(marker) + skip
    return data[:at] + value + data[at + len(value) :]


def test_malformed_model_files_never_take_the_server_down(
    server_with: Any, default_model_file: Path
) -> None:
    """Files llama.cpp rejects, and one it would abort() the whole process on."""
    server = server_with()
    data = default_model_file.read_bytes()
    u32 = (4).to_bytes(4, "little")  # GGUF's value type UINT32
    variants = {
        # The header claims 1,000 layers: llama.cpp's GGML_ASSERT aborts the process reading it.
        "layers": _patched(data, b"llama.block_count" + u32, 0, (1000).to_bytes(4, "little")),
        # The first tensor's type is no type at all (name, n_dims, 2 dims, then the type).
        "tensortype": _patched(data, b"token_embd.weight", 4 + 16, (200).to_bytes(4, "little")),
        "magic": b"GGUX" + data[4:],
        "empty": b"",
    }
    for name, content in variants.items():
        path = server.home / "models" / "local" / f"{name}-GGUF" / f"{name}.Q4_1.gguf"
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    for name in ("layers", "tensortype"):
        response = ask(server, name)
        assert response.status_code == 500, response.text
        error = response.json()["error"]
        assert error["code"] == "model_load_failed" and name in error["message"]
        assert str(server.home) not in error["message"]
    assert "aborted on a malformed file" in ask(server, "layers").json()["error"]["message"]
    for name in ("magic", "empty"):  # not GGUF at all: not even listed
        assert ask(server, name).status_code == 404
    assert server.process.poll() is None
    assert httpx.get(f"{server.api_url}/models", timeout=30).status_code == 200
    assert ask(server, MODEL_ID).status_code == 200


@pytest.fixture(scope="module")
def plain_server(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path, gemma_model_file: Path
) -> Iterator[Server]:
    home_root = tmp_path_factory.mktemp("paths")
    server = start_server(make_home(home_root, default_model_file, gemma_model_file))
    yield server
    server.stop()


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "local/../../x", "..", "a/b/c/d/e", "~/.ssh"]
)
def test_model_names_cannot_reach_outside_the_models_folder(
    plain_server: Server, name: str
) -> None:
    assert ask(plain_server, name).status_code == 404
    load = httpx.post(
        f"{plain_server.base_url}/api/v1/models/load", json={"model": name}, timeout=30
    )
    assert load.status_code == 404
    assert httpx.get(f"{plain_server.base_url}/api/v0/models/{name}").status_code == 404
