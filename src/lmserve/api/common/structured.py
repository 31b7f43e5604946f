"""``response_format``: the grammar that makes the output parse (and match a schema)."""

from __future__ import annotations

from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.protocol import ResponseFormat
from lmserve.engine.grammar import SchemaNotSupported, json_object_grammar, schema_grammar


def schema_to_grammar(schema: object, param: str) -> str:
    try:
        return schema_grammar(schema)
    except SchemaNotSupported as exc:
        raise InvalidRequestError(
            f"Unsupported JSON schema: {exc}.", param=param, code="unsupported_schema"
        ) from exc


def response_format_grammar(response_format: ResponseFormat | None) -> str | None:
    """GBNF for the format, or None for free text."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return json_object_grammar()
    assert response_format.json_schema is not None  # the protocol model checks it
    return schema_to_grammar(
        response_format.json_schema.schema_, "response_format.json_schema.schema"
    )
