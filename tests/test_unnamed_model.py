"""A request whose ``model`` is missing or null, on every surface: the one model loaded serves
it; with several loaded, or none, it is a 400 in that surface's error shape naming the loaded
models (and nothing is loaded for it); a name no model has stays a 404 (issue #30).

One server for the module, started with no model and two downloaded; each test loads or
unloads what it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import connect_ws

from lmserve.models.default import GEMMA3_270M
from tests.conftest import (
    GEMMA_ID,
    MODEL_ID,
    Server,
    install_default_model,
    install_model,
    start_server,
)

HI = [{"role": "user", "content": "Hi"}]

# Each surface's route and a request to it without ``model``: the ones that generate ask for
# one token.
SURFACES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai-chat": ("/v1/chat/completions", {"messages": HI, "max_tokens": 1}),
    "openai-completions": ("/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
    "openai-embeddings": ("/v1/embeddings", {"input": "Hi"}),
    "v0-chat": ("/api/v0/chat/completions", {"messages": HI, "max_tokens": 1}),
    "v0-completions": ("/api/v0/completions", {"prompt": "Hi", "max_tokens": 1}),
    "v0-embeddings": ("/api/v0/embeddings", {"input": "Hi"}),
    "v1-chat": ("/api/v1/chat", {"input": "Hi", "max_output_tokens": 1}),
    "responses": ("/v1/responses", {"input": "Hi", "max_output_tokens": 1}),
    "anthropic": ("/v1/messages", {"messages": HI, "max_tokens": 1}),
    "anthropic-count": ("/v1/messages/count_tokens", {"messages": HI}),
}

# LM Studio's SDK protocol: an empty query is ``client.llm.model()`` with no key.
ANY = {"type": "query", "query": {}}
SDK_CALLS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sdk-tokenize": ("llm", "tokenize", {"specifier": ANY, "inputString": "Hi"}),
    "sdk-predict": (
        "llm",
        "predict",
        {
            "modelSpecifier": ANY,
            "history": {
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
            },
            "predictionConfigStack": {
                "layers": [
                    {
                        "layerName": "apiOverride",
                        "config": {
                            "fields": [
                                {
                                    "key": "llm.prediction.maxPredictedTokens",
                                    "value": {"checked": True, "value": 1},
                                }
                            ]
                        },
                    }
                ]
            },
        },
    ),
    "sdk-embed": ("embedding", "embedString", {"modelSpecifier": ANY, "inputString": "Hi"}),
}


@pytest.fixture(scope="module", name="server")
def server_fixture(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path, gemma_model_file: Path
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    install_default_model(home, default_model_file)
    install_model(home, gemma_model_file, GEMMA3_270M)
    server = start_server(home, "--no-model", "--parallel", "1", "--context-length", "1024")
    try:
        yield server
    finally:
        server.stop()


def loaded(server: Server) -> set[str]:
    models = httpx.get(f"{server.base_url}/api/v0/models").json()["data"]
    return {model["id"] for model in models if model["state"] == "loaded"}


def keep_loaded(server: Server, *wanted: str) -> None:
    """Load and unload until exactly ``wanted`` is loaded."""
    now = loaded(server)
    for identifier in now - set(wanted):
        answer = httpx.post(
            f"{server.base_url}/api/v1/models/unload", json={"instance_id": identifier}
        )
        answer.raise_for_status()
    for key in set(wanted) - now:
        answer = httpx.post(
            f"{server.base_url}/api/v1/models/load", json={"model": key}, timeout=120
        )
        answer.raise_for_status()
    assert loaded(server) == set(wanted)


def ask(server: Server, surface: str, model: Any = ..., **extra: Any) -> httpx.Response:
    """A request to ``surface``: without ``model`` (the default), or with the one given."""
    path, body = SURFACES[surface]
    if model is not ...:
        body = {"model": model, **body}
    return httpx.post(f"{server.base_url}{path}", json={**body, **extra}, timeout=120)


def error_message(surface: str, answer: httpx.Response, status: int) -> str:
    """The message of an error answer, after checking its status and its surface's shape."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    if surface.startswith("anthropic"):
        kind = {400: "invalid_request_error", 404: "not_found_error"}[status]
        assert body["type"] == "error" and body["error"]["type"] == kind
        return body["error"]["message"]  # type: ignore[no-any-return]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == "model"
    code = {400: "missing_required_parameter", 404: "model_not_found"}[status]
    assert error["code"] == code
    return error["message"]  # type: ignore[no-any-return]


def sdk_call(server: Server, call: str) -> dict[str, Any]:
    """An SDK call with an empty query: its ``rpcResult``/``success`` packet, or its error."""
    namespace, endpoint, parameter = SDK_CALLS[call]
    auth = {"authVersion": 1, "clientIdentifier": "tests", "clientPasskey": "any"}
    with httpx.Client() as http, connect_ws(f"{server.base_url}/{namespace}", http) as ws:
        ws.send_json(auth)
        assert ws.receive_json(timeout=10) == {"success": True}
        if endpoint != "predict":
            ws.send_json(
                {"type": "rpcCall", "endpoint": endpoint, "callId": 1, "parameter": parameter}
            )
            return ws.receive_json(timeout=60)  # type: ignore[no-any-return]
        create = {"type": "channelCreate", "endpoint": endpoint, "channelId": 1}
        ws.send_json({**create, "creationParameter": parameter})
        while True:
            frame = ws.receive_json(timeout=60)
            if frame["type"] == "channelError":
                return frame  # type: ignore[no-any-return]
            if frame["type"] == "channelSend" and frame["message"]["type"] == "success":
                return frame["message"]  # type: ignore[no-any-return]


def sdk_error(frame: dict[str, Any]) -> dict[str, Any]:
    """The SDK error of a refused call: ``generic.noModelMatchingQuery``, naming the loaded."""
    assert frame["type"] in {"rpcError", "channelError"}, frame
    error = frame["error"]
    assert error["displayData"]["code"] == "generic.noModelMatchingQuery"
    return error  # type: ignore[no-any-return]


# -- one model loaded: it serves ----------------------------------------------------------------


@pytest.mark.parametrize("surface", SURFACES)
def test_one_loaded_model_serves_a_request_naming_none(server: Server, surface: str) -> None:
    keep_loaded(server, MODEL_ID)
    for answer in (ask(server, surface), ask(server, surface, None)):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if surface == "v1-chat":
            assert body["model_instance_id"] == MODEL_ID
        elif surface == "anthropic-count":
            assert body["input_tokens"] > 0
        else:
            assert body["model"] == MODEL_ID


@pytest.mark.parametrize("call", SDK_CALLS)
def test_one_loaded_model_serves_an_sdk_call_naming_none(server: Server, call: str) -> None:
    keep_loaded(server, MODEL_ID)
    frame = sdk_call(server, call)
    if call == "sdk-predict":
        assert frame["type"] == "success" and frame["stats"]["predictedTokensCount"] == 1
    else:
        assert frame["type"] == "rpcResult", frame


@pytest.mark.parametrize("surface", SURFACES)
def test_a_wrong_name_is_still_not_found(server: Server, surface: str) -> None:
    keep_loaded(server, MODEL_ID)
    message = error_message(surface, ask(server, surface, "no-such-model"), 404)
    assert "no-such-model" in message and MODEL_ID in message


# -- several loaded: a 400 naming them ----------------------------------------------------------


@pytest.mark.parametrize("surface", SURFACES)
def test_several_loaded_models_refuse_a_request_naming_none(server: Server, surface: str) -> None:
    keep_loaded(server, MODEL_ID, GEMMA_ID)
    for answer in (ask(server, surface), ask(server, surface, None)):
        message = error_message(surface, answer, 400)
        assert "No model was named, and 2 models are loaded" in message
        assert MODEL_ID in message and GEMMA_ID in message


@pytest.mark.parametrize("call", SDK_CALLS)
def test_several_loaded_models_refuse_an_sdk_call_naming_none(server: Server, call: str) -> None:
    keep_loaded(server, MODEL_ID, GEMMA_ID)
    error = sdk_error(sdk_call(server, call))
    assert "2 models are loaded" in error["title"]
    assert sorted(error["displayData"]["loadedModelsSample"]) == sorted([MODEL_ID, GEMMA_ID])


# -- none loaded: a 400 that says so, and nothing is loaded for it ------------------------------


@pytest.mark.parametrize("surface", SURFACES)
def test_no_loaded_model_refuses_a_request_naming_none(server: Server, surface: str) -> None:
    keep_loaded(server)
    for answer in (ask(server, surface), ask(server, surface, None)):
        message = error_message(surface, answer, 400)
        assert "No model was named, and none is loaded" in message
        assert MODEL_ID in message  # a downloaded one it could name
    assert loaded(server) == set()


@pytest.mark.parametrize("call", SDK_CALLS)
def test_no_loaded_model_refuses_an_sdk_call_naming_none(server: Server, call: str) -> None:
    keep_loaded(server)
    error = sdk_error(sdk_call(server, call))
    assert "none is loaded" in error["title"]
    assert error["displayData"]["loadedModelsSample"] == []
    assert loaded(server) == set()
