"""/v1/embeddings on the real chat model: pooled, normalised, meaningful."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.conftest import MODEL_ID
from tests.helpers import vocabulary


def vectors(client: OpenAI, inputs: str | list) -> list[np.ndarray]:
    response = client.embeddings.create(model=MODEL_ID, input=inputs)
    return [np.array(item.embedding) for item in response.data]


def test_a_string_gives_a_unit_vector(client: OpenAI) -> None:
    response = client.embeddings.create(model=MODEL_ID, input="The cat sat on the mat.")
    [item] = response.data
    assert item.index == 0 and len(item.embedding) == 576
    assert np.linalg.norm(item.embedding) == pytest.approx(1.0, abs=1e-5)
    assert response.usage.prompt_tokens == response.usage.total_tokens > 3
    assert response.model == MODEL_ID


def test_similar_texts_are_closer_than_unrelated_ones(client: OpenAI) -> None:
    cat, cat_again, finance = vectors(
        client,
        [
            "The cat sat on the mat.",
            "A cat is sitting on a mat.",
            "Quarterly revenue grew by twelve percent.",
        ],
    )
    assert cat @ cat_again > cat @ finance + 0.1


def test_same_input_same_vector_alone_or_in_a_list(client: OpenAI) -> None:
    alone = vectors(client, "Deterministic, please.")[0]
    in_list = vectors(client, ["Something else first.", "Deterministic, please."])[1]
    assert np.array_equal(alone, in_list)


def test_token_arrays_embed_like_their_text(client: OpenAI, default_model_file: Path) -> None:
    tokens = vocabulary(default_model_file).tokenize("Bread and butter.", add_special=False)
    by_text = vectors(client, "Bread and butter.")[0]
    by_tokens = vectors(client, tokens)[0]
    by_token_lists = vectors(client, [tokens, tokens])
    assert np.allclose(by_text, by_tokens) and np.allclose(by_tokens, by_token_lists[1])


def test_base64_encoding_carries_the_same_floats(http: httpx.Client) -> None:
    body = {"model": MODEL_ID, "input": "Encode me."}
    floats = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    encoded = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert np.allclose(decoded, floats, atol=1e-6)


def test_dimensions_other_than_the_models_are_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL_ID, input="x", dimensions=256)
    assert caught.value.body["param"] == "dimensions" and "576" in caught.value.body["message"]
    assert (
        len(client.embeddings.create(model=MODEL_ID, input="x", dimensions=576).data[0].embedding)
        == 576
    )


@pytest.mark.parametrize("bad", ["", [], [""], [[]], [999999999]])
def test_empty_or_invalid_inputs_are_400(http: httpx.Client, bad: object) -> None:
    response = http.post("/v1/embeddings", json={"model": MODEL_ID, "input": bad})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_lm_studio_v0_route(http: httpx.Client) -> None:
    response = http.post("/api/v0/embeddings", json={"model": MODEL_ID, "input": "hi"})
    assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 576
