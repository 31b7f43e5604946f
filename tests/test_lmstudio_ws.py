"""LM Studio's WebSocket protocol frame by frame, as no SDK would send it: bad frames, keys,
the Host check, seeds, a client that leaves mid-prediction.  The SDKs themselves are in
``test_lmstudio_sdk.py`` and ``test_lmstudio_sdk_js.py``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import WebSocketSession, WebSocketUpgradeError, connect_ws

from lmserve.api.lmstudio_ws.errors import SDKError
from lmserve.api.lmstudio_ws.history import chat_messages
from lmserve.api.lmstudio_ws.kvconfig import flatten, prediction
from lmserve.api.lmstudio_ws.protocol import ChatHistory, KvStack
from tests.conftest import MODEL_ID, Server, running_server

AUTH = {"authVersion": 1, "clientIdentifier": "tests", "clientPasskey": "not-a-key"}


@contextmanager
def session(
    server: Server, namespace: str = "llm", auth: dict[str, Any] | None = AUTH, **headers: str
) -> Iterator[WebSocketSession]:
    with (
        httpx.Client() as http,
        connect_ws(f"{server.base_url}/{namespace}", http, headers=headers) as ws,
    ):
        if auth is not None:
            ws.send_json(auth)
            assert ws.receive_json(timeout=10) == {"success": True}
        yield ws


def receive(ws: WebSocketSession) -> dict[str, Any]:
    return ws.receive_json(timeout=60)  # type: ignore[no-any-return]


def predict_frame(channel: int, text: str, *fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "channelCreate",
        "endpoint": "predict",
        "channelId": channel,
        "creationParameter": {
            "modelSpecifier": {"type": "query", "query": {"identifier": MODEL_ID}},
            "history": {
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]
            },
            "predictionConfigStack": {
                "layers": [{"layerName": "apiOverride", "config": {"fields": list(fields)}}]
            },
        },
    }


def field(key: str, value: Any) -> dict[str, Any]:
    return {"key": f"llm.prediction.{key}", "value": value}


def predicted(ws: WebSocketSession, channel: int) -> tuple[str, dict[str, Any]]:
    """The text of a prediction and its success packet, once its channel closes."""
    text, success = "", None
    while True:
        frame = receive(ws)
        assert frame["channelId"] == channel, frame
        if frame["type"] == "channelClose":
            assert success is not None
            return text, success
        assert frame["type"] == "channelSend", frame
        packet = frame["message"]
        if packet["type"] == "fragment":
            text += packet["fragment"]["content"]
        elif packet["type"] == "success":
            success = packet


def busy_slots(server: Server) -> int:
    slots = httpx.get(f"{server.base_url}/lmserve/slots", timeout=10).json()["models"][0]["slots"]
    return sum(1 for slot in slots if slot["busy"])


# -- the protocol ---------------------------------------------------------------------------------


def test_the_greeting_says_lm_studio(server: Server) -> None:
    greeting = httpx.get(f"{server.base_url}/lmstudio-greeting").json()
    assert greeting["lmstudio"] is True and greeting["server"] == "lmserve"


def test_bad_frames_get_errors_and_the_connection_keeps_serving(server: Server) -> None:
    with session(server) as ws:
        ws.send_text("not json")
        assert receive(ws)["type"] == "communicationWarning"
        ws.send_json({"type": "teleport", "callId": 1})
        assert "no known type" in receive(ws)["warning"]
        ws.send_json({"type": ["rpcCall"]})
        assert "no known type" in receive(ws)["warning"]
        ws.send_json({"type": "rpcCall", "endpoint": "tokenize", "callId": 1, "parameter": 3})
        error = receive(ws)
        assert error["type"] == "rpcError" and error["callId"] == 1
        assert "Invalid parameter for 'tokenize'" in error["error"]["title"]
        ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": "two"})
        assert "callId" in receive(ws)["warning"]
        ws.send_json({"type": "channelCreate", "endpoint": "predict", "channelId": 3})
        error = receive(ws)
        assert error["type"] == "channelError" and error["channelId"] == 3
        ws.send_json({"type": "channelSend", "channelId": 99, "message": {"type": "cancel"}})
        assert "unknown channel" in receive(ws)["warning"]
        ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": 4})
        [loaded] = receive(ws)["result"]
        assert loaded["identifier"] == MODEL_ID
        ws.send_json({"type": "keepAlive"})
        assert receive(ws) == {"type": "keepAliveAck"}


def test_an_unknown_endpoint_gets_a_warning_and_no_answer_as_from_lm_studio(
    server: Server,
) -> None:
    earlier = len(server.log())  # the shared server's log: earlier tests are refused too
    with session(server) as ws:
        frames = [
            {"type": "channelCreate", "endpoint": "noSuchEndpoint", "channelId": 1},
            {"type": "rpcCall", "endpoint": "noSuchCall", "callId": 2},
            {"type": "signalSubscribe", "endpoint": "noSuchSignal", "subscribeId": 3},
            {"type": "writableSignalSubscribe", "endpoint": "noSuchWritable", "subscribeId": 4},
        ]
        for frame in frames:
            ws.send_json({**frame, "creationParameter": {}})
            warning = (
                f"Received {frame['type']} for unknown endpoint, endpoint = {frame['endpoint']}"
            )
            assert receive(ws) == {"type": "communicationWarning", "warning": warning}
        # Nothing else comes for them: the next frame is the next call's answer.
        ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": 5})
        answer = receive(ws)
        assert (answer["type"], answer["callId"]) == ("rpcResult", 5)
    # An endpoint LM Studio has and lmserve does not serve is refused by name.
    with session(server, "plugins") as ws:
        frame = {"type": "channelCreate", "endpoint": "setPredictionLoopHandler", "channelId": 1}
        ws.send_json(frame)
        error = receive(ws)
        assert error["type"] == "channelError" and error["channelId"] == 1
        assert (
            "does not serve the 'plugins' namespace's endpoint 'setPredictionLoopHandler'"
            in (error["error"]["title"])
        )
        # A hook is a plugin's own: a client without a plugin's credentials is told so.
        ws.send_json({"type": "channelCreate", "endpoint": "setToolsProvider", "channelId": 2})
        error = receive(ws)
        assert error["type"] == "channelError" and error["channelId"] == 2
        assert "Only a plugin may call this" in error["error"]["title"]
    with session(server, "system") as ws:
        ws.send_json({"type": "rpcCall", "endpoint": "startHttpServer", "callId": 1})
        assert "is not supported by lmserve" in receive(ws)["error"]["title"]
    # Each refusal is one line of the server's log: namespace, endpoint and why.
    deadline = time.monotonic() + 10
    while "system.startHttpServer" not in server.log()[earlier:] and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = server.log()[earlier:].splitlines()
    refusals = [line for line in logged if "refused an SDK" in line]
    for expected in [
        "channel, llm.noSuchEndpoint: no such endpoint",
        "call, llm.noSuchCall: no such endpoint",
        "signal, llm.noSuchSignal: no such endpoint",
        "signal, llm.noSuchWritable: no such endpoint",
        "channel, plugins.setPredictionLoopHandler: lmserve does not serve",
        "channel, plugins.setToolsProvider: Only a plugin may call this",
        "call, system.startHttpServer: Starting or stopping the HTTP server",
    ]:
        assert sum(expected in line for line in refusals) == 1, (expected, refusals)


def test_an_unknown_model_is_no_model_matching_query(server: Server) -> None:
    with session(server) as ws:
        frame = predict_frame(0, "Hi")
        frame["creationParameter"]["modelSpecifier"]["query"]["identifier"] = "nope"
        ws.send_json(frame)
        error = receive(ws)
        assert error["type"] == "channelError"
        display = error["error"]["displayData"]
        assert display["code"] == "generic.noModelMatchingQuery"
        assert display["query"] == {"identifier": "nope"}
        assert display["loadedModelsSample"] == [MODEL_ID] and display["totalLoadedModels"] == 1


def test_presets_are_not_found_and_templates_leave_files_out(server: Server) -> None:
    with session(server) as ws:
        frame = predict_frame(0, "Hi")
        frame["creationParameter"]["fuzzyPresetIdentifier"] = "Creative"
        ws.send_json(frame)
        display = receive(ws)["error"]["displayData"]
        assert display["code"] == "generic.presetNotFound"
        assert display["specifiedFuzzyPresetIdentifier"] == "Creative"
        file = {
            "type": "file",
            "name": "a.txt",
            "identifier": "f",
            "sizeBytes": 1,
            "fileType": "text/plain",
        }
        history = {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, file]}]
        }
        specifier = {"type": "query", "query": {"identifier": MODEL_ID}}
        parameter = {"specifier": specifier, "history": history, "opts": {}}
        ws.send_json(
            {
                "type": "rpcCall",
                "endpoint": "applyPromptTemplate",
                "callId": 1,
                "parameter": parameter,
            }
        )
        assert "<|im_start|>user\nHi<|im_end|>" in receive(ws)["result"]["formatted"]
        frame = predict_frame(2, "Hi")
        frame["creationParameter"]["history"] = history
        ws.send_json(frame)
        # A prediction needs the file: none was uploaded by that identifier.
        assert "No file 'f' is kept" in receive(ws)["error"]["title"]


def test_the_first_frame_must_authenticate(server: Server) -> None:
    with session(server, auth=None) as ws:
        ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": 0})
        refusal = receive(ws)
        assert refusal["success"] is False and "authentication frame" in refusal["error"]


def test_a_seed_repeats_a_sampled_answer(server: Server) -> None:
    sampled = (
        field("temperature", 1.0),
        field("maxPredictedTokens", {"checked": True, "value": 12}),
    )
    seed = field("seed", {"checked": True, "value": 1234})
    with session(server) as ws:
        answers = []
        for channel in range(2):
            ws.send_json(predict_frame(channel, "Invent a word.", *sampled, seed))
            text, success = predicted(ws, channel)
            answers.append(text)
            used = {f["key"]: f["value"] for f in success["predictionConfig"]["fields"]}
            assert used["llm.prediction.seed"] == {"checked": True, "value": 1234}
        assert answers[0] == answers[1] and answers[0]


def test_channels_run_side_by_side_and_cancel_alone(server: Server) -> None:
    long = field("maxPredictedTokens", {"checked": True, "value": 2000})
    with session(server) as ws:
        ws.send_json(predict_frame(0, "Write a very long story.", long))
        ws.send_json(
            predict_frame(1, "Say hi.", field("maxPredictedTokens", {"checked": True, "value": 3}))
        )
        done: dict[int, dict[str, Any]] = {}
        closed: set[int] = set()
        fragments = {0: 0, 1: 0}
        while len(closed) < 2:
            frame = receive(ws)
            channel = frame["channelId"]
            if frame["type"] == "channelClose":
                assert channel in done  # after its success packet
                closed.add(channel)
            elif frame["message"]["type"] == "fragment":
                fragments[channel] += 1
                if channel == 0 and fragments[0] == 3:
                    cancel = {"type": "channelSend", "channelId": 0, "message": {"type": "cancel"}}
                    ws.send_json(cancel)
            elif frame["message"]["type"] == "success":
                done[channel] = frame["message"]["stats"]
        assert done[0]["stopReason"] == "userStopped" and done[1]["predictedTokensCount"] == 3


def test_a_client_that_leaves_mid_prediction_frees_its_slot(server: Server) -> None:
    long = field("maxPredictedTokens", {"checked": True, "value": 2000})
    with session(server) as ws:
        ws.send_json(predict_frame(0, "Write a very long story.", long))
        while receive(ws)["message"]["type"] != "fragment":
            pass
        assert busy_slots(server) == 1
    deadline = time.monotonic() + 5
    while busy_slots(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert busy_slots(server) == 0


def test_diagnostics_stream_the_prompts(server: Server) -> None:
    with session(server, "diagnostics") as logs, session(server) as llm:
        logs.send_json({"type": "channelCreate", "endpoint": "streamLogs", "channelId": 0})
        time.sleep(0.5)  # subscribed before the prediction starts
        llm.send_json(
            predict_frame(0, "Echo me.", field("maxPredictedTokens", {"checked": True, "value": 1}))
        )
        predicted(llm, 0)
        log = receive(logs)["message"]["log"]
        assert log["data"]["modelIdentifier"] == MODEL_ID
        assert "<|im_start|>user\nEcho me.<|im_end|>" in log["data"]["input"]
        logs.send_json({"type": "channelSend", "channelId": 0, "message": {"type": "stop"}})
        assert receive(logs) == {"type": "channelClose", "channelId": 0}


# -- guards ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[Server]:
    with running_server(tmp_path_factory, default_model_file, "--api-key", "sekret") as server:
        yield server


def test_api_keys_apply_to_the_sdk_protocol(keyed_server: Server) -> None:
    assert httpx.get(f"{keyed_server.base_url}/lmstudio-greeting").status_code == 200
    with session(keyed_server, auth=None) as ws:
        ws.send_json(AUTH)
        refusal = receive(ws)
        assert refusal["success"] is False and "API key" in refusal["error"]
    with session(keyed_server, auth={**AUTH, "clientPasskey": "sekret"}) as ws:
        ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": 0})
        assert receive(ws)["result"][0]["identifier"] == MODEL_ID
    with session(keyed_server, authorization="Bearer sekret") as ws:
        ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": 0})
        assert receive(ws)["type"] == "rpcResult"


def test_a_foreign_host_is_refused(server: Server) -> None:
    with pytest.raises(WebSocketUpgradeError) as refused, session(server, host="evil.example"):
        pass
    assert refused.value.response.status_code == 403


# -- the protocol's pieces, without a server -----------------------------------------------------


def test_later_config_layers_win() -> None:
    stack = KvStack.model_validate(
        {
            "layers": [
                {"layerName": "apiOverride", "config": {"fields": [field("temperature", 0.1)]}},
                {"layerName": "preset", "config": {"fields": [field("temperature", 0.7)]}},
            ]
        }
    )
    assert prediction(flatten(stack)).fields["temperature"] == 0.7


def test_checkboxes_and_their_off_values() -> None:
    config = {
        "llm.prediction.topPSampling": {"checked": False, "value": 0.5},
        "llm.prediction.minPSampling": {"checked": True, "value": 0.2},
        "llm.prediction.repeatPenalty": {"checked": True, "value": -1},
        "llm.prediction.maxPredictedTokens": {"checked": False, "value": 1},
        "llm.prediction.topKSampling": -1,
        "llm.prediction.tools": {
            "type": "toolArray",
            "tools": [{"type": "function"}],
            "force": True,
        },
        "llm.prediction.structured": {"type": "json", "jsonSchema": {"type": "object"}},
    }
    fields = prediction(config).fields
    assert (fields["top_p"], fields["min_p"], fields["repeat_penalty"]) == (1.0, 0.2, 1.0)
    assert fields["max_tokens"] is None and fields["top_k"] == 0
    assert fields["tool_choice"] == "required"
    assert fields["response_format"]["json_schema"]["schema"] == {"type": "object"}
    with pytest.raises(SDKError, match=r"llm\.prediction\.temperature"):
        prediction({"llm.prediction.temperature": "hot"})


def test_history_parts_become_chat_messages() -> None:
    history = ChatHistory.model_validate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": ""},
                        {
                            "type": "toolCallRequest",
                            "toolCallRequest": {
                                "type": "function",
                                "name": "f",
                                "arguments": {"x": 1},
                            },
                        },
                    ],
                },
                {
                    "role": "tool",
                    "content": [
                        {"type": "toolCallResult", "content": "1", "toolCallId": "c1"},
                        {"type": "toolCallResult", "content": "2", "toolCallId": "c2"},
                    ],
                },
            ]
        }
    )
    user, assistant, first, second = chat_messages(history)
    assert user.content == "a\nb"
    [call] = assistant.tool_calls or []
    assert call.function.name == "f" and json.loads(call.function.arguments) == {"x": 1}
    assert call.id and call.id.startswith("call_")
    assert (first.role, first.tool_call_id, second.content) == ("tool", "c1", "2")
