"""Bad input gets OpenAI's error shape and the right status; the server keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import MODEL_ID

GOOD = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert isinstance(error["message"], str) and error["message"]
    for leak in ("Traceback", "/site-packages/", '.py"', "lmserve/"):
        assert leak not in response.text
    return error


def assert_still_serving(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=GOOD)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] is not None


BAD_BODIES = {
    "malformed_json": ('{"model": "x", "messages": [', None),
    "body_is_array": ("[1, 2, 3]", None),
    "body_is_string": ('"hello"', None),
    "messages_missing": ({"model": MODEL_ID}, "messages"),
    "messages_empty": ({**GOOD, "messages": []}, "messages"),
    "messages_not_list": ({**GOOD, "messages": "hi"}, "messages"),
    "unknown_role": (
        {**GOOD, "messages": [{"role": "wizard", "content": "hi"}]},
        "messages[0].role",
    ),
    "content_wrong_type": (
        {**GOOD, "messages": [{"role": "user", "content": 42}]},
        "messages[0].content",
    ),
    "temperature_string": ({**GOOD, "temperature": "hot"}, "temperature"),
    "temperature_negative": ({**GOOD, "temperature": -0.5}, "temperature"),
    "temperature_too_high": ({**GOOD, "temperature": 5}, "temperature"),
    "max_tokens_negative": ({**GOOD, "max_tokens": -1}, "max_tokens"),
    "max_tokens_zero": ({**GOOD, "max_tokens": 0}, "max_tokens"),
    "top_p_above_one": ({**GOOD, "top_p": 1.5}, "top_p"),
    "top_k_negative": ({**GOOD, "top_k": -3}, "top_k"),
    "min_p_above_one": ({**GOOD, "min_p": 2}, "min_p"),
    "presence_penalty_out_of_range": ({**GOOD, "presence_penalty": 3}, "presence_penalty"),
    "frequency_penalty_out_of_range": ({**GOOD, "frequency_penalty": -3}, "frequency_penalty"),
    "repeat_penalty_zero": ({**GOOD, "repeat_penalty": 0}, "repeat_penalty"),
    "n_zero": ({**GOOD, "n": 0}, "n"),
    "stream_not_bool": ({**GOOD, "stream": "yes please"}, "stream"),
    "stop_wrong_type": ({**GOOD, "stop": 12}, "stop"),
    "logit_bias_not_token": ({**GOOD, "logit_bias": {"hello": 5}}, "logit_bias"),
    "logit_bias_token_out_of_vocab": ({**GOOD, "logit_bias": {"99999999": 5}}, "logit_bias"),
    # Bounded in the schema, so the error names the entry.
    "logit_bias_value_out_of_range": ({**GOOD, "logit_bias": {"10": 500}}, "logit_bias.10"),
    # A missing or null model is served by the one loaded (test_unnamed_model.py); an empty
    # name is no name.
    "model_empty": ({**GOOD, "model": ""}, "model"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_request_is_400(http: httpx.Client, name: str) -> None:
    body, param = BAD_BODIES[name]
    if isinstance(body, str):
        response = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = http.post("/v1/chat/completions", json=body)
    error = assert_error(response, 400, "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    assert_still_serving(http)


def test_a_prompt_that_would_fit_a_longer_context_says_which(http: httpx.Client) -> None:
    long_text = "lorem ipsum dolor sit amet " * 700  # ~7,000 tokens: > 4,096, < 8,192 trained
    response = http.post(
        "/v1/chat/completions", json={**GOOD, "messages": [{"role": "user", "content": long_text}]}
    )
    error = assert_error(response, 400, "invalid_request_error")
    assert error["code"] == "context_length_exceeded"
    prompt_tokens = int(error["message"].split("resulted in ")[1].split(" ")[0])
    suggested = int(error["message"].split("--context-length ")[1].split(" ")[0])
    assert 4096 < prompt_tokens < suggested <= 8192
    assert "trained on 8192 tokens" in error["message"]


def test_unknown_model_is_404_never_a_fallback(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={**GOOD, "model": "gpt-4o"})
    error = assert_error(response, 404, "invalid_request_error")
    assert error["code"] == "model_not_found"
    assert "gpt-4o" in error["message"]
    assert_still_serving(http)


def test_prompt_longer_than_the_context(http: httpx.Client) -> None:
    long_text = "lorem ipsum dolor sit amet " * 1200  # ~6,000 tokens > 4,096
    response = http.post(
        "/v1/chat/completions", json={**GOOD, "messages": [{"role": "user", "content": long_text}]}
    )
    error = assert_error(response, 400, "invalid_request_error")
    assert error["code"] == "context_length_exceeded"
    assert "4096" in error["message"]
    prompt_tokens = int(error["message"].split("resulted in ")[1].split(" ")[0])
    assert prompt_tokens > 4096
    assert "trained on 8192 tokens: no context would hold it" in error["message"]
    assert_still_serving(http)


def test_unknown_route_is_404_in_openai_shape(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing-here"), 404, "invalid_request_error")


def test_wrong_method_is_405_in_openai_shape(http: httpx.Client) -> None:
    assert_error(http.get("/v1/chat/completions"), 405, "invalid_request_error")


def test_images_are_refused_clearly(http: httpx.Client) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    response = http.post(
        "/v1/chat/completions", json={**GOOD, "messages": [{"role": "user", "content": content}]}
    )
    error = assert_error(response, 400, "invalid_request_error")
    # LM Studio's words for a model that cannot see, and how to give it eyes.
    assert "does not support images" in error["message"]
    assert "mmproj" in error["message"]
    assert error["param"] == "messages[0].content[1]"
    assert error["code"] == "model_not_vision"


def test_text_content_parts_are_accepted(http: httpx.Client) -> None:
    content = [{"type": "text", "text": "Say hi"}]
    response = http.post(
        "/v1/chat/completions", json={**GOOD, "messages": [{"role": "user", "content": content}]}
    )
    assert response.status_code == 200
