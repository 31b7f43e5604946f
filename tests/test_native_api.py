"""LM Studio's native REST API: /api/v0 and /api/v1 in their documented shapes."""

from __future__ import annotations

import httpx

from lmserve.engine.llama import gpu_offload_supported
from tests.conftest import MODEL_ID

CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}


def test_v0_models(http: httpx.Client) -> None:
    listing = http.get("/api/v0/models").json()
    assert listing["object"] == "list"
    model = next(item for item in listing["data"] if item["id"] == MODEL_ID)
    assert model == {
        "id": MODEL_ID,
        "object": "model",
        "type": "llm",
        "publisher": "HuggingFaceTB",
        "arch": "llama",
        "compatibility_type": "gguf",
        "quantization": "Q4_1",
        "state": "loaded",
        "max_context_length": 8192,
        "loaded_context_length": 4096,
    }
    assert http.get(f"/api/v0/models/{MODEL_ID}").json() == model
    missing = http.get("/api/v0/models/no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_v0_chat_adds_stats_model_info_and_runtime(http: httpx.Client) -> None:
    body = http.post("/api/v0/chat/completions", json=CHAT).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    stats = body["stats"]
    assert stats["stop_reason"] in {"eosFound", "maxPredictedTokensReached"}
    assert stats["time_to_first_token"] > 0 and stats["generation_time"] >= 0
    assert body["model_info"] == {
        "arch": "llama",
        "quant": "Q4_1",
        "format": "gguf",
        "context_length": 4096,
    }
    assert body["runtime"]["supported_formats"] == ["gguf"]


def test_v0_accepts_max_tokens_minus_one_as_no_limit(http: httpx.Client) -> None:
    body = {**CHAT, "max_tokens": -1, "temperature": 0}
    response = http.post("/api/v0/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["stats"]["stop_reason"] == "eosFound"
    # The OpenAI-compatible route keeps OpenAI's rule.
    assert http.post("/v1/chat/completions", json=body).status_code == 400


def test_v0_completions(http: httpx.Client) -> None:
    body = http.post(
        "/api/v0/completions",
        # The end-of-text tokens banned: a sampled raw completion may otherwise end early.
        json={
            "model": MODEL_ID,
            "prompt": "The sky is",
            "max_tokens": 6,
            "logit_bias": {"0": -100, "2": -100},
        },
    ).json()
    assert body["object"] == "text_completion"
    assert body["usage"]["completion_tokens"] == 6
    assert body["stats"]["stop_reason"] == "maxPredictedTokensReached"


def test_v0_stream_ends_with_stats(http: httpx.Client) -> None:
    with http.stream("POST", "/api/v0/chat/completions", json={**CHAT, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"object":"stats"' in lines[-2] and '"tokens_per_second"' in lines[-2]


def test_v1_models_shape(http: httpx.Client) -> None:
    models = http.get("/api/v1/models").json()["models"]
    model = next(item for item in models if item["key"] == MODEL_ID)
    assert model["type"] == "llm" and model["publisher"] == "HuggingFaceTB"
    assert model["architecture"] == "llama" and model["format"] == "gguf"
    assert model["quantization"]["name"] == "Q4_1"
    assert 4 < model["quantization"]["bits_per_weight"] < 7
    assert model["params_string"] == "135M"
    assert model["size_bytes"] == 98_362_432
    assert model["max_context_length"] == 8192
    assert model["capabilities"] == {"vision": False, "trained_for_tool_use": False}
    [instance] = model["loaded_instances"]
    assert instance["id"] == MODEL_ID and instance["config"]["context_length"] == 4096
    # The default offload setting, resolved against this llama.cpp build.
    assert instance["config"]["gpu"] == "auto"
    assert instance["config"]["gpu_layers"] == (-1 if gpu_offload_supported() else 0)


def test_v1_load_is_idempotent_and_unload_of_unknown_is_404(http: httpx.Client) -> None:
    again = http.post("/api/v1/models/load", json={"model": MODEL_ID})
    assert again.status_code == 200 and again.json()["model_instance_id"] == MODEL_ID
    missing = http.post("/api/v1/models/unload", json={"instance_id": "nothing-here"})
    assert missing.status_code == 404
    bad = http.post("/api/v1/models/load", json={"model": MODEL_ID, "config": {"gpu": "lots"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "config.gpu"


def test_a_load_asks_llama_cpp_for_the_layers_its_gpu_setting_names(http: httpx.Client) -> None:
    # A CPU build ignores the layers asked for, but the instance reports what was asked.
    for gpu, layers in (("max", -1), ("0.5", 15), ("off", 0)):  # SmolLM2-135M has 30 layers
        identifier = f"gpu-{gpu}"
        loaded = http.post(
            "/api/v1/models/load",
            json={"model": MODEL_ID, "config": {"gpu": gpu, "identifier": identifier}},
        )
        assert loaded.status_code == 200, loaded.text
        config = loaded.json()["config"]
        assert (config["gpu"], config["gpu_layers"]) == (gpu, layers)
        unloaded = http.post("/api/v1/models/unload", json={"instance_id": identifier})
        assert unloaded.status_code == 200


def test_flash_attention_is_llama_cpps_choice_unless_a_load_sets_it(http: httpx.Client) -> None:
    def answer(model: str) -> list[float]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": 24,
            "temperature": 0,
            "logprobs": True,
        }
        reply = http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        return [item["logprob"] for item in reply.json()["choices"][0]["logprobs"]["content"]]

    [model] = [m for m in http.get("/api/v1/models").json()["models"] if m["key"] == MODEL_ID]
    config = model["loaded_instances"][0]["config"]
    assert config["flash_attention"] is None  # left to llama.cpp
    assert config["flash_attention_reason"] == "llama.cpp's choice"
    loaded = http.post(
        "/api/v1/models/load",
        json={"model": MODEL_ID, "config": {"flash_attention": False, "identifier": "fa-off"}},
    )
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["config"]["flash_attention"] is False
    assert loaded.json()["config"]["flash_attention_reason"] == "set to off"
    try:
        # The other kernel really runs: log-probabilities that differ in their last digits
        # (each kernel alone gives the same ones every time); later tokens may part at a tie.
        without, default = answer("fa-off"), answer(MODEL_ID)
        assert answer("fa-off") == without
        assert without != default
        assert abs(without[0] - default[0]) < 0.3
    finally:
        assert http.post("/api/v1/models/unload", json={"instance_id": "fa-off"}).status_code == 200
    bad = http.post("/api/v1/models/load", json={"model": MODEL_ID, "flash_attention": "sometimes"})
    assert bad.status_code == 400
