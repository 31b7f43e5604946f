"""LM Studio's own Python SDK (``lmstudio`` 1.5.0, from PyPI) against the real server.

Every call a script makes (``respond``, ``respond_stream``, ``complete``, ``act``, the model
listings, loads, tokenizing, embeddings) goes over LM Studio's WebSocket protocol, and its
answer is checked against what the REST API answers for the same request: the same engine,
template and sampler behind both.  Loading just in time, discovery with no host, and
loading new instances run on a server of their own that starts with no model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import lmstudio as lms
import numpy as np
import pytest
from lmstudio import LMStudioModelNotFoundError, LMStudioServerError
from lmstudio._sdk_models import LlmRpcUnloadModelParameter
from lmstudio.json_api import ChatResponseEndpoint

from tests.conftest import MODEL_ID, Server, running_server
from tests.helpers import free_sdk_port, prompts

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[lms.Client]:
    with lms.Client(f"127.0.0.1:{server.port}") as sdk:
        yield sdk


@pytest.fixture(scope="module")
def model(client: lms.Client) -> Any:
    return client.llm.model(MODEL_ID)


def rest_chat(server: Server, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    body = {"model": MODEL_ID, "messages": messages, **fields}
    answer = httpx.post(f"{server.api_url}/chat/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def busy_slots(server: Server) -> int:
    slots = httpx.get(f"{server.base_url}/lmserve/slots", timeout=10).json()["models"][0]["slots"]
    return sum(1 for slot in slots if slot["busy"])


# -- models -------------------------------------------------------------------------------------


def test_lists_downloaded_and_loaded_models(client: lms.Client) -> None:
    [downloaded] = client.list_downloaded_models()
    assert downloaded.model_key == MODEL_ID and downloaded.type == "llm"
    assert downloaded.info.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert downloaded.info.max_context_length == 8192
    assert [m.identifier for m in client.llm.list_loaded()] == [MODEL_ID]
    assert client.embedding.list_loaded() == []  # no embedding models: LM Studio lists by type


def test_a_model_handle_reports_its_instance(model: Any) -> None:
    info = model.get_info()
    assert (info.identifier, info.model_key, info.context_length) == (MODEL_ID, MODEL_ID, 4096)
    assert info.format == "gguf" and info.architecture == "llama" and info.params_string == "135M"
    assert model.get_context_length() == 4096
    assert model.get_load_config().context_length == 4096


def test_tokens_are_the_engines(server: Server, model: Any) -> None:
    tokens = model.tokenize("Hello world, hello tokens.")
    assert model.count_tokens("Hello world, hello tokens.") == len(tokens)
    body = {"model": MODEL_ID, "prompt": "Hello world, hello tokens.", "max_tokens": 1}
    usage = httpx.post(f"{server.api_url}/completions", json=body, timeout=120).json()["usage"]
    assert usage["prompt_tokens"] == len(tokens)
    assert model.tokenize(["a", "b c"]) == [model.tokenize("a"), model.tokenize("b c")]


def test_the_prompt_template_is_the_models_own(server: Server, model: Any) -> None:
    chat = lms.Chat("Always answer in rhymes.")
    chat.add_user_message("Introduce yourself.")
    with prompts(server) as seen:
        rest_chat(
            server,
            [
                {"role": "system", "content": "Always answer in rhymes."},
                {"role": "user", "content": "Introduce yourself."},
            ],
            max_tokens=1,
        )
    assert model.apply_prompt_template(chat) == seen[0]


# -- predictions --------------------------------------------------------------------------------


def test_respond_answers_as_the_rest_api_does(server: Server, model: Any) -> None:
    result = model.respond("Name a fruit.", config={**GREEDY, "maxTokens": 12})
    rest = rest_chat(
        server, [{"role": "user", "content": "Name a fruit."}], temperature=0, max_tokens=12
    )
    assert result.content == rest["choices"][0]["message"]["content"]
    stats = result.stats
    assert stats.prompt_tokens_count == rest["usage"]["prompt_tokens"]
    assert stats.predicted_tokens_count == rest["usage"]["completion_tokens"]
    assert stats.stop_reason in {"eosFound", "maxPredictedTokensReached"}
    assert stats.time_to_first_token_sec is not None and stats.time_to_first_token_sec > 0
    assert result.model_info.model_key == MODEL_ID
    assert result.load_config.context_length == 4096


def test_respond_stream_sends_fragments(model: Any) -> None:
    stream = model.respond_stream("Count from one to ten.", config={**GREEDY, "maxTokens": 16})
    fragments = list(stream)
    result = stream.result()
    assert len(fragments) > 3
    assert "".join(f.content for f in fragments) == result.content
    assert sum(f.tokens_count for f in fragments) == result.stats.predicted_tokens_count == 16
    assert result.stats.stop_reason == "maxPredictedTokensReached"


def test_complete_continues_the_raw_prompt(server: Server, model: Any) -> None:
    with prompts(server) as seen:
        result = model.complete("The capital of France is", config={**GREEDY, "maxTokens": 8})
    assert seen == ["The capital of France is"]  # no chat template around it
    body = {"model": MODEL_ID, "prompt": "The capital of France is", "temperature": 0}
    rest = httpx.post(
        f"{server.api_url}/completions", json={**body, "max_tokens": 8}, timeout=120
    ).json()
    assert result.content == rest["choices"][0]["text"]


def test_complete_has_no_token_limit_unless_asked(model: Any) -> None:
    """A text completion runs until the model (or a stop string) ends it, as a chat does:
    not OpenAI's default of 16 tokens for /v1/completions."""
    counting = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
    stream = model.complete_stream(counting, config={**GREEDY, "stopStrings": [" 30,"]})
    for seen, _ in enumerate(stream, 1):
        if seen == 200:  # should the model not count, stop it rather than fill the context
            stream.cancel()
    result = stream.result()
    assert result.stats.predicted_tokens_count > 16, result.content
    assert result.stats.stop_reason in {"stopStringFound", "userStopped", "eosFound"}


def test_the_prediction_config_reaches_the_sampler(server: Server, model: Any) -> None:
    config = {
        "temperature": 0.3,
        "topKSampling": 7,
        "topPSampling": 0.8,
        "minPSampling": 0.1,
        "repeatPenalty": 1.3,
        "maxTokens": 4,
    }
    result = model.respond("Hello!", config=config)
    used = result.prediction_config
    assert (used.temperature, used.top_k_sampling, used.top_p_sampling) == (0.3, 7, 0.8)
    assert (used.min_p_sampling, used.repeat_penalty, used.max_tokens) == (0.1, 1.3, 4)
    assert result.stats.predicted_tokens_count == 4


def test_stop_strings_end_the_answer(server: Server, model: Any) -> None:
    free = model.respond("Count from one to ten.", config={**GREEDY, "maxTokens": 24}).content
    words = free.split()
    assert len(words) > 3, free
    stop = words[2]
    result = model.respond("Count from one to ten.", config={**GREEDY, "stopStrings": [stop]})
    assert result.stats.stop_reason == "stopStringFound"
    assert stop not in result.content and free.startswith(result.content)


def test_structured_output_parses_and_validates(model: Any) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    result = model.respond("Describe a person.", response_format=schema, config={"maxTokens": 60})
    assert result.structured and isinstance(result.parsed, dict)
    jsonschema.validate(result.parsed, schema)


def test_a_gbnf_grammar_constrains_the_answer(model: Any) -> None:
    grammar = {"type": "gbnf", "gbnfGrammar": 'root ::= "yes" | "no"'}
    for question in ("Is the sky blue?", "Is fire cold?"):
        assert model.respond(question, response_format=grammar).content in {"yes", "no"}


def test_prompt_processing_progress_is_reported(model: Any) -> None:
    progress: list[float] = []
    long = "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 120
    result = model.respond(
        long, config={"maxTokens": 2}, on_prompt_processing_progress=progress.append
    )
    assert result.stats.prompt_tokens_count > 1024  # read in chunks of 512
    assert progress[0] == 0.0 and progress[-1] == 1.0
    assert any(0.0 < value < 1.0 for value in progress), progress  # while it was read
    assert progress == sorted(progress)


def test_cancel_mid_stream_frees_the_slot(server: Server, model: Any) -> None:
    stream = model.respond_stream("Write a very long story.", config={"maxTokens": 2000})
    for seen, _ in enumerate(stream, 1):
        if seen == 3:
            assert busy_slots(server) == 1
            stream.cancel()
    result = stream.result()
    assert result.stats.stop_reason == "userStopped"
    assert result.stats.predicted_tokens_count < 100
    deadline = time.monotonic() + 5
    while busy_slots(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert busy_slots(server) == 0


def test_act_runs_a_tool_and_answers_with_its_result(
    server: Server, model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 135M model does not call a tool by itself: the SDK's tool setting is forced here
    (``force``, as the JavaScript SDK's ``rawTools`` can ask), so the first round's call is
    made by grammar; the second round, which ``max_prediction_rounds`` leaves without
    tools, answers with the tool's result in its history."""
    parse_tools = ChatResponseEndpoint.parse_tools

    def forced(tools: Any, allow_async: bool = False) -> Any:
        setting, implementations = parse_tools(tools, allow_async)
        setting.force = True
        return setting, implementations

    monkeypatch.setattr(ChatResponseEndpoint, "parse_tools", staticmethod(forced))
    calls: list[tuple[int, int]] = []

    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.append((a, b))
        return a + b

    messages: list[Any] = []
    with prompts(server) as seen:
        result = model.act(
            "What is 12 plus 30?",
            [add],
            on_message=messages.append,
            max_prediction_rounds=2,
            config={**GREEDY, "maxTokens": 40},
        )
    assert result.rounds == 2 and len(calls) == 1
    request, tool_result, answer = (message.to_dict() for message in messages)
    [call] = [part["toolCallRequest"] for part in request["content"][1:]]
    assert call["name"] == "add" and call["id"].startswith("call_")
    assert tool_result["content"][0]["toolCallId"] == call["id"]
    assert tool_result["content"][0]["content"] == str(sum(calls[0]))
    assert answer["role"] == "assistant" and answer["content"][0]["text"]
    assert len(seen) == 2
    assert "add" in seen[0] and "<tool_call>" in seen[1]
    assert f"<tool_response>\n{sum(calls[0])}\n</tool_response>" in seen[1]


def test_act_answers_directly_when_no_tool_is_called(model: Any) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        raise AssertionError("not called")

    rounds: list[Any] = []
    result = model.act(
        "Say hello.", [add], on_prediction_completed=rounds.append, config={"maxTokens": 8}
    )
    assert result.rounds == 1 and rounds[0].content


# -- errors -------------------------------------------------------------------------------------


def test_an_unknown_model_is_model_not_found(client: lms.Client) -> None:
    with pytest.raises(LMStudioModelNotFoundError, match="no-such-model"):
        client.llm.model("no-such-model")
    with pytest.raises(LMStudioModelNotFoundError):
        client.llm._create_handle("no-such-model").respond("Hi")


def test_bad_calls_get_errors_and_the_connection_keeps_serving(
    client: lms.Client, model: Any
) -> None:
    # An endpoint LM Studio has and lmserve does not serve is refused by name (one LM Studio
    # does not have gets no answer, as from LM Studio: test_lmstudio_ws.py).
    with pytest.raises(LMStudioServerError, match="HTTP server from an SDK is not supported"):
        client.system.remote_call("startHttpServer")
    with pytest.raises(LMStudioServerError, match="Invalid parameter for 'tokenize'"):
        client.llm.remote_call("tokenize", LlmRpcUnloadModelParameter(identifier="x"))
    with pytest.raises(LMStudioServerError, match="temperature"):
        model.respond("Hi", config={"temperature": 5.0})
    # An image is kept for a vision model's prediction (test_images_surfaces.py).
    handle = client.prepare_image(b"\x89PNG\r\n\x1a\n", name="pixel.png")
    assert (handle.file_type, handle.size_bytes, handle.name) == ("image", 8, "pixel.png")
    assert [m.identifier for m in client.llm.list_loaded()] == [MODEL_ID]
    assert model.respond("Hi", config={"maxTokens": 2}).stats.predicted_tokens_count == 2


# -- embeddings -----------------------------------------------------------------------------------


def test_embeddings_are_the_rest_apis(server: Server, client: lms.Client) -> None:
    embedder = client.embedding.model(MODEL_ID)
    vectors = embedder.embed(["The cat sat on the mat.", "Quarterly revenue grew."])
    body = {"model": MODEL_ID, "input": ["The cat sat on the mat.", "Quarterly revenue grew."]}
    rest = httpx.post(f"{server.api_url}/embeddings", json=body, timeout=120).json()["data"]
    assert len(vectors) == 2 and len(vectors[0]) == 576
    for mine, theirs in zip(vectors, rest, strict=True):
        assert np.allclose(mine, theirs["embedding"], atol=1e-6)
    assert embedder.get_info().type == "embedding"


# -- a server that starts with no model -----------------------------------------------------------


@pytest.fixture(scope="module")
def empty_server(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[tuple[Server, int | str]]:
    port = free_sdk_port()
    sdk_port = str(port) if isinstance(port, int) else "off"
    with running_server(
        tmp_path_factory,
        default_model_file,
        "--no-model",
        "--parallel",
        "1",
        "--sdk-port",
        sdk_port,
    ) as started:
        yield started, port


def test_llm_with_no_host_finds_lmserve_and_loads_just_in_time(
    empty_server: tuple[Server, int | str],
) -> None:
    server, port = empty_server
    if not isinstance(port, int):
        pytest.skip(port)
    assert f"find this server on 127.0.0.1:{port}" in server.log()
    progress: list[float] = []
    lms.sync_api._reset_default_client()
    try:
        loaded = lms.get_default_client().llm.model(MODEL_ID, on_load_progress=progress.append)
        assert lms.get_default_client().api_host == f"127.0.0.1:{port}"
        assert progress == [0.0, 1.0]
        assert [m.identifier for m in lms.list_loaded_models("llm")] == [MODEL_ID]
        assert lms.llm().identifier == loaded.identifier == MODEL_ID
        assert lms.llm(MODEL_ID).respond("Hi", config={"maxTokens": 2}).content
    finally:
        lms.sync_api._reset_default_client()


def test_load_new_instance_with_config_and_ttl(empty_server: tuple[Server, int | str]) -> None:
    server, _ = empty_server
    with lms.Client(f"127.0.0.1:{server.port}") as client:

        def loaded() -> list[str]:
            return [model.identifier for model in client.llm.list_loaded()]

        progress: list[float] = []
        small = client.llm.load_new_instance(
            MODEL_ID,
            "small",
            ttl=600,
            config={
                "contextLength": 1024,
                "flashAttention": True,
                "llamaKCacheQuantizationType": "q8_0",
                "llamaVCacheQuantizationType": "q8_0",
            },
            on_load_progress=progress.append,
        )
        brief = client.llm.load_new_instance(MODEL_ID, ttl=2, config={"contextLength": 512})
        assert progress == [0.0, 1.0]
        assert small.identifier == "small" and small.get_context_length() == 1024
        small_config = small.get_load_config()
        assert small_config.flash_attention is True
        assert small_config.llama_k_cache_quantization_type == "q8_0"
        assert small_config.llama_v_cache_quantization_type == "q8_0"
        assert brief.identifier in {MODEL_ID, f"{MODEL_ID}:2"}  # :2 if one is loaded already
        assert brief.get_context_length() == 512
        models = httpx.get(f"{server.base_url}/api/v1/models", timeout=10).json()["models"]
        ttls = {i["id"]: i["config"]["ttl"] for m in models for i in m["loaded_instances"]}
        assert ttls["small"] == 600 and ttls[brief.identifier] == 2
        flash = {
            i["id"]: i["config"]["flash_attention"] for m in models for i in m["loaded_instances"]
        }
        assert flash["small"] is True
        kinds = {
            i["id"]: (i["config"]["kv_cache_type_k"], i["config"]["kv_cache_type_v"])
            for m in models
            for i in m["loaded_instances"]
        }
        assert kinds["small"] == ("q8_0", "q8_0") and kinds[brief.identifier] == ("f16", "f16")
        deadline = time.monotonic() + 15  # its two-second TTL unloads the idle one
        while brief.identifier in loaded() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert brief.identifier not in loaded() and "small" in loaded()
        small.unload()
        assert "small" not in loaded()
        with pytest.raises(LMStudioModelNotFoundError, match="small"):
            client.llm.unload("small")
