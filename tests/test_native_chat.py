"""LM Studio's native stateful chat, ``POST /api/v1/chat``, on the real server and model."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from tests.conftest import MODEL_ID, Server
from tests.helpers import prompts

FIRST = {
    "model": MODEL_ID,
    "input": "My favourite colour is blue.",
    "system_prompt": "Be brief.",
    "max_output_tokens": 12,
    "temperature": 0,
}


def test_a_chat_answers_with_output_stats_and_a_response_id(http: httpx.Client) -> None:
    result = http.post("/api/v1/chat", json=FIRST).json()
    assert result["model_instance_id"] == MODEL_ID
    [message] = result["output"]
    assert message["type"] == "message" and message["content"]
    stats = result["stats"]
    assert stats["input_tokens"] > 10 and 0 < stats["total_output_tokens"] <= 12
    assert stats["reasoning_output_tokens"] == 0
    assert stats["time_to_first_token_seconds"] > 0
    assert result["response_id"].startswith("resp_")


def test_previous_response_id_continues_the_thread(http: httpx.Client, server: Server) -> None:
    with prompts(server) as seen:
        first = http.post("/api/v1/chat", json=FIRST).json()
        http.post(
            "/api/v1/chat",
            json={
                "model": MODEL_ID,
                "input": "What colour did I mention?",
                "previous_response_id": first["response_id"],
                "max_output_tokens": 5,
            },
        ).raise_for_status()
    prompt = seen[-1]
    said = ["Be brief.", FIRST["input"], first["output"][-1]["content"], "What colour"]
    positions = [prompt.index(text) for text in said]
    assert positions == sorted(positions)


def test_unstored_chats_have_no_response_id_and_unknown_ids_are_404(http: httpx.Client) -> None:
    result = http.post("/api/v1/chat", json={**FIRST, "store": False}).json()
    assert "response_id" not in result
    missing = http.post("/api/v1/chat", json={**FIRST, "previous_response_id": "resp_nothing"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "previous_response_not_found"


def test_a_stream_is_lm_studios_named_events(http: httpx.Client) -> None:
    with http.stream("POST", "/api/v1/chat", json={**FIRST, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        blocks = response.read().decode().strip().split("\n\n")
    events: list[dict[str, Any]] = []
    for block in blocks:
        event_line, data_line = block.split("\n")
        event = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {event['type']}"
        events.append(event)
    kinds = [event["type"] for event in events]
    assert kinds[:5] == [
        "chat.start",
        "prompt_processing.start",
        "prompt_processing.end",
        "message.start",
        "message.delta",
    ]
    assert kinds[-2:] == ["message.end", "chat.end"]
    assert set(kinds[4:-2]) == {"message.delta"}
    streamed = "".join(event["content"] for event in events if event["type"] == "message.delta")
    result = events[-1]["result"]
    assert result["output"][-1]["content"] == streamed
    assert result["response_id"].startswith("resp_")


def test_a_long_prompt_streams_its_progress(http: httpx.Client) -> None:
    """A prompt read in several chunks (512 tokens each) reports how far it has got."""
    long_input = f"{uuid.uuid4()} " + "The tide comes in and the tide goes out. " * 200
    body = {"model": MODEL_ID, "input": long_input, "stream": True, "max_output_tokens": 3}
    with http.stream("POST", "/api/v1/chat", json=body) as response:
        blocks = response.read().decode().strip().split("\n\n")
    events = [json.loads(block.split("\n")[1].removeprefix("data: ")) for block in blocks]
    kinds = [event["type"] for event in events]
    start, end = kinds.index("prompt_processing.start"), kinds.index("prompt_processing.end")
    progress = [event["progress"] for event in events[start + 1 : end]]
    assert set(kinds[start + 1 : end]) == {"prompt_processing.progress"}
    assert len(progress) >= 2 and progress == sorted(set(progress))
    assert progress[0] > 0 and progress[-1] < 1


def test_bad_requests_are_400(http: httpx.Client) -> None:
    cases = [
        ({"model": MODEL_ID}, "input"),
        ({**FIRST, "integrations": [{"type": "plugin"}]}, "integrations[0].id"),
        ({**FIRST, "reasoning": "maximum"}, "reasoning"),
        ({**FIRST, "max_output_tokens": 0}, "max_output_tokens"),
    ]
    for body, param in cases:
        response = http.post("/api/v1/chat", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param
