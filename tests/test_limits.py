"""Input limits: the body cap (413), caps on list sizes, and bounds on every numeric field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from lmserve.api.app import create_app
from lmserve.config import DEFAULT_MAX_BODY_SIZE, Settings
from lmserve.models.manager import ModelManager
from tests.conftest import MODEL_ID
from tests.test_errors import GOOD, assert_error, assert_still_serving

MIB = 2**20


def chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    while total > 0:
        yield b" " * min(size, total)
        total -= size


def test_a_body_over_the_default_cap_is_413_and_the_server_goes_on(http: httpx.Client) -> None:
    declared = http.post(
        "/v1/chat/completions",
        content=b"{" + b" " * DEFAULT_MAX_BODY_SIZE,
        headers={"content-type": "application/json"},
    )
    error = assert_error(declared, 413, "invalid_request_error")
    assert error["code"] == "request_too_large"
    assert len(declared.content) < 1000
    # Chunked: no Content-Length to judge by, so the server counts what arrives.
    streamed = http.post(
        "/v1/completions",
        content=chunks(DEFAULT_MAX_BODY_SIZE + MIB),
        headers={"content-type": "application/json"},
    )
    assert assert_error(streamed, 413, "invalid_request_error")["code"] == "request_too_large"
    assert_still_serving(http)


def test_the_cap_is_configurable_and_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSERVE_HOME", str(tmp_path))
    settings = Settings(max_body_size=1000)
    app = create_app(ModelManager(tmp_path / "models", settings), settings=settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for body, status in ((b" " * 1000, 400), (b" " * 1001, 413)):
            assert client.post("/v1/chat/completions", content=body).status_code == status
            streamed = client.post("/v1/chat/completions", content=chunks(len(body), 300))
            assert streamed.status_code == status


MESSAGE = {"role": "user", "content": "hi"}
CAPPED = {
    "messages_over_4096": ({**GOOD, "messages": [MESSAGE] * 4097}, "messages"),
    "logit_bias_over_1024": (
        {**GOOD, "logit_bias": {str(token): 1 for token in range(1025)}},
        "logit_bias",
    ),
    "n_over_16": ({**GOOD, "n": 17}, "n"),
    "max_tokens_over_cap": ({**GOOD, "max_tokens": 1_000_001}, "max_tokens"),
    "max_completion_tokens_over_cap": (
        {**GOOD, "max_completion_tokens": 10**7},
        "max_completion_tokens",
    ),
    "top_logprobs_over_20": ({**GOOD, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    "stop_over_16": ({**GOOD, "stop": [f"s{i}" for i in range(17)]}, "stop"),
    "stop_string_over_1000": ({**GOOD, "stop": ["x" * 1001]}, "stop"),
    "seed_over_64_bits": ({**GOOD, "seed": 2**64}, "seed"),
    "ttl_over_a_year": ({**GOOD, "ttl": 10**9}, "ttl"),
    "top_k_huge": ({**GOOD, "top_k": 10**12}, "top_k"),
}


@pytest.mark.parametrize("name", list(CAPPED))
def test_caps_on_chat_requests(http: httpx.Client, name: str) -> None:
    body, param = CAPPED[name]
    error = assert_error(http.post("/v1/chat/completions", json=body), 400, "invalid_request_error")
    assert error["param"] is not None and error["param"].startswith(param)
    assert len(error["message"]) <= 1000


COMPLETION = {"model": MODEL_ID, "prompt": "Once", "max_tokens": 1}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**COMPLETION, "prompt": [[1, 2**31]]}, "prompt"),
        ({**COMPLETION, "prompt": [1, -1]}, "prompt"),
        # 16 prompts × n 16 = 256 choices: more than a request may ask for.
        ({**COMPLETION, "prompt": ["a"] * 16, "n": 16}, "n"),
    ],
)
def test_caps_on_completion_requests(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    error = assert_error(http.post("/v1/completions", json=body), 400, "invalid_request_error")
    assert error["param"] is not None and error["param"].startswith(param)


def test_error_messages_never_echo_a_huge_input(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={**GOOD, "model": "m" * 100_000})
    assert_error(response, 404, "invalid_request_error")
    assert len(response.content) < 2000


# -- every numeric field of every request body is bounded ------------------------------------


def numeric_leaves(schema: dict[str, Any], spec: dict[str, Any], where: str) -> Iterator[Any]:
    """(location, schema) of every integer or number schema reachable from ``schema``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        yield from numeric_leaves(spec["components"]["schemas"][name], spec, f"{where}<{name}>")
        return
    if schema.get("type") in {"integer", "number"}:
        yield where, schema
    for key in ("anyOf", "oneOf", "allOf"):
        for index, option in enumerate(schema.get(key, [])):
            yield from numeric_leaves(option, spec, f"{where}|{index}")
    for name, child in schema.get("properties", {}).items():
        yield from numeric_leaves(child, spec, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from numeric_leaves(schema[key], spec, f"{where}[{key}]")


def test_every_numeric_field_is_bounded_in_the_schema(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    checked = []
    seen: set[str] = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                for where, leaf in numeric_leaves(media["schema"], spec, f"{method} {path}"):
                    field = where.split("<", 1)[-1]
                    if field in seen:
                        continue
                    seen.add(field)
                    checked.append(where)
                    low = "minimum" in leaf or "exclusiveMinimum" in leaf
                    high = "maximum" in leaf or "exclusiveMaximum" in leaf
                    assert low and high, f"unbounded numeric field: {where}"
    assert len(checked) >= 20
