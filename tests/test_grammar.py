"""Structured output's grammars: JSON schemas, GBNF and tool calls made into llguidance
grammars (api/common/structured.py), what is refused and how it is named, and the engine's
Constraint following a document token by token on the real vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.protocol import ToolDefinition
from lmserve.api.common.structured import gbnf_to_grammar, schema_to_grammar
from lmserve.api.common.tools import CLOSE, OPEN, call_grammar
from lmserve.engine.grammar import Constraint
from lmserve.engine.llama import LlamaModel
from tests.helpers import vocabulary

PARAM = "response_format.json_schema.schema"


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "pattern": "^(?=a)a$"}, "look-around"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"$ref": "https://example.com/schema"}, "https://example.com/schema"),
        ({"type": "string", "format": "kaboom"}, "kaboom"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum (5)"),
        ({"$ref": "#"}, "loops with no way out"),
        (
            {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]},
            "/properties/next",
        ),
        (False, "accepts nothing"),
    ],
)
def test_what_cannot_be_enforced_is_a_400_naming_it(schema: object, named: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        schema_to_grammar(schema, PARAM)
    assert named in caught.value.message
    assert caught.value.code == "unsupported_schema" and caught.value.param == PARAM


_KEYS = [
    "type",
    "properties",
    "required",
    "items",
    "prefixItems",
    "anyOf",
    "allOf",
    "$ref",
    "enum",
    "const",
    "pattern",
    "minimum",
    "maxLength",
    "format",
    "minItems",
    "$defs",
]
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.sampled_from(
        ["string", "object", "#", "#/$defs/a", "#/properties/x", "^a+$", "(", "email", "x"]
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*_KEYS, "a", "x"]), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_any_schema_is_served_or_a_400(schema: object) -> None:
    try:
        schema_to_grammar(schema, PARAM)
    except InvalidRequestError as exc:
        assert exc.code == "unsupported_schema"


def test_a_recursive_schema_with_a_way_out_is_served() -> None:
    tree = {
        "type": "object",
        "properties": {"children": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["children"],
    }
    assert schema_to_grammar(tree, PARAM)


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
    {"type": "string", "pattern": "^[a-z]+(-[a-z]+)*$"},
    {"type": "number", "minimum": -1.5, "exclusiveMaximum": 3.5},
    {"type": "string", "format": "email"},
    {"type": "array", "prefixItems": {"type": "string"}},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=[str(i) for i in range(len(SCHEMAS))])
def test_schemas_compile(schema: object) -> None:
    assert schema_to_grammar(schema, PARAM)


@pytest.fixture(scope="module")
def vocab_model(default_model_file: Path) -> LlamaModel:
    return vocabulary(default_model_file)


def follow(model: LlamaModel, grammar: str, text: str) -> Constraint:
    """A constraint that has followed ``text``'s tokens, each of which it allowed."""
    constraint = Constraint(model, grammar)
    for token in model.tokenize(text, add_special=False):
        assert constraint.allows(token), (text, model.piece(token))
        assert constraint.allowed()[token]
        constraint.accept(token)
    return constraint


def test_a_document_is_followed_and_then_only_the_end_is_allowed(vocab_model: LlamaModel) -> None:
    grammar = schema_to_grammar(
        {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "price": {"type": "number", "minimum": 0.5, "maximum": 9.75},
            },
            "required": ["code", "price"],
            "additionalProperties": False,
        },
        PARAM,
    )
    done = follow(vocab_model, grammar, '{"code": "ABC", "price": 2.5}')
    allowed = done.allowed().nonzero()[0]
    assert len(allowed) >= 1 and all(vocab_model.is_eog(int(token)) for token in allowed)
    # A lower-case code, a price over the maximum, free whitespace: each is refused.
    for wrong in ('{"code": "abc"', '{"code": "ABC", "price": 10', '{ "code"'):
        constraint = Constraint(vocab_model, grammar)
        tokens = vocab_model.tokenize(wrong, add_special=False)
        for token in tokens[:-1]:
            if not constraint.allows(token):
                break
            constraint.accept(token)
        else:
            assert not constraint.allows(tokens[-1]), wrong


def test_tool_calls_follow_each_tools_schema(vocab_model: LlamaModel) -> None:
    tools = [
        ToolDefinition.model_validate(
            {
                "function": {
                    "name": "get_weather",
                    "parameters": {
                        "$defs": {"unit": {"enum": ["C", "F"]}},
                        "type": "object",
                        "properties": {
                            "city": {"type": "string"},
                            "unit": {"$ref": "#/$defs/unit"},
                        },
                        "required": ["city", "unit"],
                    },
                }
            }
        ),
        ToolDefinition.model_validate({"function": {"name": "now"}}),
    ]
    grammar = call_grammar(tools, parallel=True)
    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}
    other = {"name": "now", "arguments": {}}
    text = f"{OPEN}{json.dumps(call)}{CLOSE}\n{OPEN}{json.dumps(other)}{CLOSE}"
    follow(vocab_model, grammar, text)
    wrong = Constraint(vocab_model, grammar)
    for token in vocab_model.tokenize(
        f'{OPEN}{{"name": "get_weather", "arguments": {{"city": "P", "unit": "K', add_special=False
    )[:-1]:
        wrong.accept(token)
    assert not wrong.allows(vocab_model.tokenize("K", add_special=False)[0])


def test_a_clients_gbnf_is_served_and_a_bad_one_refused(vocab_model: LlamaModel) -> None:
    grammar = gbnf_to_grammar('root ::= "yes" | "no"', "gbnf")
    follow(vocab_model, grammar, "yes")
    with pytest.raises(InvalidRequestError) as caught:
        gbnf_to_grammar("root ::= ( unclosed", "gbnf")
    assert caught.value.code == "unsupported_schema"
