"""JSON Schema → GBNF: what is enforced, what is refused, and that llama.cpp accepts it."""

from __future__ import annotations

import re
from pathlib import Path

import llama_cpp as C
import pytest

from lmserve.engine.grammar import (
    SchemaNotSupported,
    integer_range,
    json_object_grammar,
    schema_grammar,
)
from lmserve.engine.llama import LlamaModel
from tests.helpers import vocabulary


def as_regex(alternatives: list[str]) -> re.Pattern[str]:
    """The GBNF alternatives integer_range emits, as a Python regex (same syntax here)."""
    parts = [alt.replace('"', "").replace(" ", "") for alt in alternatives]
    return re.compile("(?:" + "|".join(parts) + ")")


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (0, 0),
        (0, 9),
        (1, 100),
        (7, 7),
        (-5, 5),
        (-123, 456),
        (10, 999),
        (35, 1289),
        (-1000, -10),
        (0, 120),
        (99, 1001),
    ],
)
def test_integer_ranges_match_exactly_the_numbers_in_range(low: int, high: int) -> None:
    pattern = as_regex(integer_range(low, high))
    for number in range(-1500, 1500):
        assert bool(pattern.fullmatch(str(number))) == (low <= number <= high), number


def test_half_open_integer_ranges() -> None:
    at_least = as_regex(integer_range(18, None))
    assert at_least.fullmatch("18") and at_least.fullmatch("12345678")
    assert not at_least.fullmatch("17") and not at_least.fullmatch("-3")
    at_most = as_regex(integer_range(None, -2))
    assert at_most.fullmatch("-2") and at_most.fullmatch("-99999")
    assert not at_most.fullmatch("-1") and not at_most.fullmatch("0")


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "string", "pattern": "^a+$"}, "pattern"),
        ({"type": "number", "minimum": 1.5}, "minimum"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "patternProperties": {}}, "patternProperties"),
        ({"type": "string", "format": "email"}, "email"),
        ({"$ref": "https://example.com/schema"}, "$ref"),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}},
            "multipleOf",
        ),
    ],
)
def test_unsupported_keywords_are_named(schema: dict, keyword: str) -> None:
    with pytest.raises(SchemaNotSupported, match=re.escape(keyword)):
        schema_grammar(schema)


def test_nested_path_is_reported() -> None:
    schema = {"type": "object", "properties": {"inner": {"type": "string", "pattern": "x"}}}
    with pytest.raises(SchemaNotSupported, match="/properties/inner"):
        schema_grammar(schema)


SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
    {"anyOf": [{"type": "string", "enum": ["red", "green"]}, {"type": "null"}]},
    {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                },
            }
        },
        "$ref": "#/$defs/node",
    },
    {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
        },
    },
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]},
            {"type": "object", "properties": {"b": {"const": 3}}},
        ]
    },
    {"type": "object"},
    {"prefixItems": [{"type": "string"}, {"type": "integer"}], "type": "array"},
    {"type": ["string", "integer"]},
    True,
]


@pytest.fixture(scope="module")
def vocab_model(default_model_file: Path) -> LlamaModel:
    return vocabulary(default_model_file)


@pytest.mark.parametrize("schema", SCHEMAS, ids=[str(i) for i in range(len(SCHEMAS))])
def test_grammars_parse_in_llama_cpp(vocab_model: LlamaModel, schema: object) -> None:
    grammar = schema_grammar(schema)
    sampler = C.llama_sampler_init_grammar(vocab_model.vocab, grammar.encode(), b"root")
    assert sampler, grammar
    C.llama_sampler_free(sampler)


def test_json_object_grammar_parses(vocab_model: LlamaModel) -> None:
    sampler = C.llama_sampler_init_grammar(
        vocab_model.vocab, json_object_grammar().encode(), b"root"
    )
    assert sampler
    C.llama_sampler_free(sampler)
