"""Structured output and log-probabilities on the real server, with the official SDK."""

from __future__ import annotations

import asyncio
import json
import math
import random
from typing import Any

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

from tests.conftest import MODEL_ID, Server

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 40},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
SHOPPING = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "item": {"type": "string", "maxLength": 20},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 12},
            "unit": {"enum": ["kg", "pieces", "litres"]},
        },
        "required": ["item", "quantity", "unit"],
        "additionalProperties": False,
    },
    "minItems": 1,
    "maxItems": 4,
}
EVENT = {
    "$defs": {
        "place": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "indoor": {"type": "boolean"},
            },
            "required": ["city", "indoor"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "day": {"type": "string", "format": "date"},
        "place": {"$ref": "#/$defs/place"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
        "budget": {
            "anyOf": [{"type": "integer", "minimum": 0, "maximum": 10000}, {"type": "null"}]
        },
    },
    "required": ["title", "day", "place", "budget"],
    "additionalProperties": False,
}
CASES = [
    ("Invent a person and describe them.", PERSON),
    ("Write a shopping list for a picnic.", SHOPPING),
    ("Plan a small party.", EVENT),
]


def schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


async def test_fifty_random_seeded_generations_all_validate(server: Server) -> None:
    rng = random.Random(2026)
    jobs = [(CASES[i % 3], rng.randrange(1, 2**31)) for i in range(51)]

    async def one(client: AsyncOpenAI, case: tuple[str, dict], seed: int) -> tuple[str, Any]:
        prompt, schema = case
        completion = await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": prompt}],
            seed=seed,
            max_tokens=400,
            temperature=1.0,
            response_format=schema_format("out", schema),
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        return choice.message.content, schema

    async with AsyncOpenAI(base_url=server.api_url, api_key="x") as client:
        results = await asyncio.gather(*(one(client, case, seed) for case, seed in jobs))
    for text, schema in results:
        jsonschema.validate(json.loads(text), schema)
    assert len({text for text, _ in results}) > 30  # sampled, not one canned answer


class Pet(BaseModel):
    name: str = Field(max_length=20)
    species: str = Field(max_length=20)
    legs: int = Field(ge=0, le=8)


def test_sdk_parse_into_a_pydantic_model(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Describe a pet."}],
        response_format=Pet,
        max_tokens=200,
        seed=4,
    )
    pet = completion.choices[0].message.parsed
    assert isinstance(pet, Pet) and 0 <= pet.legs <= 8


def test_json_object_mode_gives_an_object(client: OpenAI) -> None:
    for seed in range(3):
        completion = client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Give me some JSON."}],
            response_format={"type": "json_object"},
            max_tokens=300,
            seed=seed,
        )
        if completion.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_structured_stream_reassembles_to_valid_json(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "A person, please."}],
        response_format=schema_format("person", PERSON),
        max_tokens=200,
        seed=8,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "pattern": "^(?=a)[a-z]+$"}, "look-around"),
        ({"type": "object", "properties": {"x": {"not": {}}}}, "not"),
        (
            {"type": "object", "properties": {"x": {"$ref": "#"}}, "required": ["x"]},
            "/properties/x",
        ),
    ],
)
def test_unsupported_schema_features_are_400_naming_them(
    client: OpenAI, schema: dict, named: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "x"}],
            response_format=schema_format("bad", schema),
        )
    error = caught.value.body
    assert named in error["message"] and error["param"] == "response_format.json_schema.schema"


def test_chat_logprobs_are_the_models_distribution(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"repeat_penalty": 1.0},  # so greedy picks the raw distribution's top
    )
    entries = completion.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == completion.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-6
        # Greedy: the chosen token is the likeliest one.
        assert entry.token == entry.top_logprobs[0].token
        assert math.isclose(entry.logprob, tops[0], abs_tol=1e-6)
        assert bytes(entry.bytes).decode() == entry.token


def test_sampled_tokens_can_be_less_likely_than_the_top(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Write a poem."}],
        max_tokens=40,
        temperature=1.5,
        seed=3,
        logprobs=True,
        top_logprobs=1,
        extra_body={"top_k": 0, "top_p": 1, "min_p": 0},
    )
    entries = completion.choices[0].logprobs.content
    assert any(e.logprob < e.top_logprobs[0].logprob - 1e-6 for e in entries)


def test_completion_logprobs_legacy_shape(client: OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID, prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=2, echo=True
    )
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 4
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == len("1, 2, 3,")
    assert completion.choices[0].text == "1, 2, 3," + "".join(logprobs.tokens)


def test_top_logprobs_without_logprobs_is_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "x"}], top_logprobs=2
        )


def test_a_raw_completion_follows_a_schema_too(client: OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID,
        prompt="A person, as JSON:",
        max_tokens=120,
        temperature=0,
        extra_body={"response_format": schema_format("person", PERSON)},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.text
    jsonschema.validate(json.loads(choice.text), PERSON)
