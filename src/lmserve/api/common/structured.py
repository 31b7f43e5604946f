"""Grammars for structured output: a JSON schema, a client's GBNF or the tool-call form, made
into an llguidance grammar and checked before a request is admitted.

llguidance (the engine's grammar matcher, :mod:`lmserve.engine.grammar`) compiles JSON
schemas itself: types, enums and consts, number and length bounds, ``pattern`` (regular
expressions without look-around), string ``format``s, ``$ref`` (recursive too), ``anyOf``,
``oneOf``, ``allOf``, ``prefixItems``.  What lmserve adds: the JSON's layout (no free
whitespace, so a model cannot wander off into padding), a few forms llama.cpp's converter
reads that the standard does not (``prefixItems`` given one schema: every item's), and a 400
``unsupported_schema`` that names what cannot be enforced, instead of an engine failure.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import gbnf_to_lark

from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.protocol import ResponseFormat

# The JSON's layout: one space after a comma or colon, nowhere else (as OpenAI's answers).
JSON_LAYOUT: llguidance.JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def unsupported(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="unsupported_schema")


def checked(grammar: str, param: str, what: str) -> str:
    """``grammar``, if llguidance can build it; else the 400 saying why."""
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem:
        raise unsupported(f"Unsupported {what}: {problem.strip()}", param)
    return grammar


def standard_form(schema: Any) -> Any:
    """``schema`` with the forms llama.cpp's converter reads that JSON Schema does not, as
    the standard spells them: ``prefixItems`` given one schema is every item's schema."""
    if isinstance(schema, list):
        return [standard_form(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: standard_form(value) for key, value in schema.items()}
    prefix = result.get("prefixItems")
    if isinstance(prefix, dict):
        del result["prefixItems"]
        if result.get("items") in (None, {}, True):
            result["items"] = prefix
    return result


def _pointer(root: Any, ref: str) -> Any:
    """What a local ``$ref`` (``#/a/b``) points at in ``root``, or None."""
    node = root
    for part in ref[1:].split("/")[1:] if ref != "#" else ():
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _local(ref: Any) -> bool:
    """Whether ``ref`` is a JSON pointer into the schema itself (``#`` or ``#/...``)."""
    return isinstance(ref, str) and (ref == "#" or ref.startswith("#/"))


def _list(node: dict[str, Any], key: str) -> list[Any]:
    value = node.get(key)
    return value if isinstance(value, list) else []


def _endless_ref(root: Any) -> str | None:
    """The first ``$ref`` (by where it is) through which no finite document can be written:
    a loop with no way out, as ``{"$ref": "#"}`` or an object that requires itself.

    Least fixpoint: a reference ends once its target can end with the references known to end
    so far; those that never do are endless.
    """
    refs: dict[str, str] = {}  # $ref -> the first place it is used

    def collect(node: Any, path: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if _local(ref):
                refs.setdefault(ref, path or "/")
            for key, value in node.items():
                collect(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                collect(value, f"{path}/{index}")

    collect(root, "")
    ending: set[str] = set()

    def ends(node: Any) -> bool:
        if node is False:
            return False
        if not isinstance(node, dict):
            return True
        ref = node.get("$ref")
        if _local(ref) and ref not in ending:
            return False
        if "enum" in node or "const" in node:
            return True
        branches = [b for key in ("anyOf", "oneOf") for b in _list(node, key)]
        if branches and not any(ends(branch) for branch in branches):
            return False
        if not all(ends(part) for part in _list(node, "allOf")):
            return False
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
        required = [name for name in _list(node, "required") if isinstance(name, str)]
        if (
            "object" in types
            and len(types) == 1
            and not all(ends(properties.get(name, True)) for name in required)
        ):
            return False
        if "array" in types and len(types) == 1:
            least = node.get("minItems") if isinstance(node.get("minItems"), int) else 0
            prefix = _list(node, "prefixItems")
            if not all(ends(item) for item in prefix[:least]):
                return False
            if least > len(prefix) and not ends(node.get("items", True)):
                return False
        return True

    changed = True
    while changed:
        changed = False
        for ref in refs:
            if ref not in ending and ends(_pointer(root, ref)):
                ending.add(ref)
                changed = True
    if ends(root):
        return None
    endless = [path for ref, path in refs.items() if ref not in ending]
    return endless[0] if endless else "/"


def schema_to_grammar(schema: object, param: str) -> str:
    """The grammar of documents valid against ``schema``; a 400 naming what it cannot do."""
    if schema is False:
        raise unsupported("Unsupported JSON schema: a schema of false accepts nothing.", param)
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise unsupported("Unsupported JSON schema: a schema is an object or a boolean.", param)
    endless = _endless_ref(schema)
    if endless is not None:
        raise unsupported(
            f"Unsupported JSON schema: the $ref at {endless} loops with no way out: no "
            "finite document matches it.",
            param,
        )
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            standard_form(schema), defaults=JSON_LAYOUT
        )
    except Exception as exc:  # whatever llguidance makes of a schema, it is the schema's
        raise unsupported(f"Unsupported JSON schema: {exc}", param) from None
    return checked(grammar, param, "JSON schema")


def gbnf_to_grammar(gbnf: str, param: str) -> str:
    """A client's GBNF grammar (llama.cpp's language, as LM Studio's SDKs send it)."""
    try:
        lark = gbnf_to_lark(gbnf)
    except Exception as exc:  # its parser raises bare exceptions on bad input
        raise unsupported(f"The GBNF grammar does not parse: {exc}", param) from None
    return checked(llguidance.LLMatcher.grammar_from_lark(lark), param, "GBNF grammar")


def lark_literal(text: str) -> str:
    """A string literal of llguidance's Lark for ``text``."""
    return json.dumps(text, ensure_ascii=False)


def response_format_grammar(response_format: ResponseFormat | None) -> str | None:
    """The grammar for the format, or None for free text."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return schema_to_grammar({"type": "object"}, "response_format")
    assert response_format.json_schema is not None  # the protocol model checks it
    return schema_to_grammar(
        response_format.json_schema.schema_, "response_format.json_schema.schema"
    )
