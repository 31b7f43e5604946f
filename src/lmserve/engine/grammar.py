"""JSON Schema → GBNF, the grammar language of llama.cpp's grammar sampler.

Structured output is enforced while sampling: the grammar sampler lets through only tokens
that keep the output a prefix of a document the grammar accepts, so the result parses and
validates whatever the model would have preferred.  Every keyword we cannot enforce is
refused with :class:`SchemaNotSupported` (naming it and where it is) rather than ignored,
because a schema that is silently half-enforced produces output that fails validation.

Enforced: ``type`` (and lists of types), ``enum``, ``const``, ``properties``, ``required``,
``additionalProperties``, ``items``, ``prefixItems``, ``minItems``/``maxItems``,
``minLength``/``maxLength``, ``format`` (date, time, date-time, uuid), integer
``minimum``/``maximum`` (and their exclusive forms), ``anyOf``/``oneOf``, ``allOf`` of
objects, local ``$ref`` (``#/$defs/...``, ``#/definitions/...``), recursion.
Whitespace between tokens is at most one space, so a model cannot wander off into padding.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from lmserve.engine.gbnf import MAX_DIGITS, integer_range, literal

# Keywords that describe but do not constrain.
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "strict",
    "name",
    "$anchor",
    "contentMediaType",
    "contentEncoding",
}
_BY_TYPE = {
    "string": {"minLength", "maxLength", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": set(),
    "boolean": set(),
    "null": set(),
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems"},
}
_GENERAL = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions"}
_FORMATS = {
    "date": r'[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] )',
    "time": r'( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? '
    r'( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
    "uuid": '[0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}',
}
_FORMATS["date-time"] = f'{_FORMATS["date"]} "T" {_FORMATS["time"]}'

_PRIMITIVES = {
    "space": '" "?',
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )',
    "string": r'"\"" char* "\"" space',
    "integer": f'"-"? ( "0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}} ) space',
    "number": f'"-"? ( "0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}} ) '
    f'( "." [0-9]{{1,{MAX_DIGITS}}} )? ( [eE] [-+]? [0-9]{{1,3}} )? space',
    "boolean": '( "true" | "false" ) space',
    "null": '"null" space',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" space ( string ":" space value ( "," space string ":" space value )* )? '
    '"}" space',
    "array": '"[" space ( value ( "," space value )* )? "]" space',
}


class SchemaNotSupported(ValueError):
    """The schema uses something the grammar cannot enforce, or is not a valid schema."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{message} (at {path or '/'})")
        self.path = path


def _json_literal(value: Any) -> str:
    return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":"))) + " space"


class GrammarBuilder:
    """Accumulates named rules; :meth:`schema` turns a schema into a rule reference."""

    def __init__(self, root_schema: dict[str, Any] | None = None) -> None:
        self.rules: dict[str, str] = {}
        self.root_schema = root_schema or {}
        self._refs: dict[str, str] = {}

    def primitive(self, name: str) -> str:
        """Add ``name`` and the primitives it refers to; return the rule name."""
        if name not in self.rules:
            self.rules[name] = _PRIMITIVES[name]
            for word in re.findall(r"\b[a-z]+\b", _PRIMITIVES[name]):
                if word in _PRIMITIVES and word != name:
                    self.primitive(word)
        return name

    def add(self, base: str, body: str) -> str:
        """Add a rule with a name derived from ``base``; return its name."""
        stem = re.sub(r"[^a-zA-Z0-9]+", "-", base).strip("-").lower() or "r"
        name, number = stem, 1
        while name in self.rules or name in _PRIMITIVES:
            number += 1
            name = f"{stem}-{number}"
        self.rules[name] = body
        return name

    def render(self, root: str) -> str:
        rules = {"root": root, **{k: v for k, v in self.rules.items() if k != "root"}}
        return "\n".join(f"{name} ::= {body}" for name, body in rules.items()) + "\n"

    # -- schemas ---------------------------------------------------------------------------------
    def schema(self, schema: Any, path: str = "") -> str:
        """A GBNF expression matching JSON documents valid against ``schema``."""
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise SchemaNotSupported("a schema of false accepts nothing", path)
        if not isinstance(schema, dict):
            raise SchemaNotSupported("a schema must be an object or a boolean", path)
        self._check_keywords(schema, path)
        if "$ref" in schema:
            return self._ref(schema["$ref"], path)
        if "const" in schema:
            return _json_literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaNotSupported("enum must be a non-empty list", path)
            return "( " + " | ".join(_json_literal(value) for value in values) + " )"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise SchemaNotSupported(f"{key} must be a non-empty list", path)
                rest = {k: v for k, v in schema.items() if k != key}
                parts = [
                    self.schema(
                        {**rest, **option} if isinstance(option, dict) else option,
                        f"{path}/{key}/{i}",
                    )
                    for i, option in enumerate(options)
                ]
                return "( " + " | ".join(parts) + " )"
        if "allOf" in schema:
            return self.schema(self._merge_all_of(schema, path), path)
        kind = schema.get("type")
        if isinstance(kind, list):
            parts = [
                self.schema({**schema, "type": one}, f"{path}/type/{i}")
                for i, one in enumerate(kind)
            ]
            return "( " + " | ".join(parts) + " )"
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.primitive("value")
        handler = getattr(self, f"_{kind}", None)
        if handler is None:
            raise SchemaNotSupported(f"unknown type {kind!r}", path)
        return handler(schema, path)

    def _check_keywords(self, schema: dict[str, Any], path: str) -> None:
        kinds = schema.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else list(_BY_TYPE)
        allowed = set(_GENERAL) | _ANNOTATIONS
        for kind in kinds:
            allowed |= _BY_TYPE.get(kind, set())
        for key in schema:
            if key not in allowed:
                hint = ""
                if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                    hint = " (bounds are enforced on integers only)"
                raise SchemaNotSupported(
                    f"the JSON Schema keyword '{key}' is not supported{hint}", path
                )

    def _ref(self, ref: Any, path: str) -> str:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise SchemaNotSupported(f"only local $ref ('#/...') is supported, not {ref!r}", path)
        if ref in self._refs:
            return self._refs[ref]
        target: Any = self.root_schema
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise SchemaNotSupported(f"$ref {ref!r} points nowhere", path)
            target = target[part]
        name = self.add(ref.rsplit("/", 1)[-1], "")  # reserved first: refs may recurse
        self._refs[ref] = name
        self.rules[name] = self.schema(target, ref[1:])
        return name

    def _merge_all_of(self, schema: dict[str, Any], path: str) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for index, part in enumerate(schema["allOf"]):
            if isinstance(part, dict) and "$ref" in part:
                part = self._resolve(part["$ref"], f"{path}/allOf/{index}")
            if not isinstance(part, dict) or part.get("type", "object") != "object":
                raise SchemaNotSupported(
                    "allOf is supported for object schemas only", f"{path}/allOf/{index}"
                )
            merged["type"] = "object"
            merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
            merged["required"] = [*merged.get("required", []), *part.get("required", [])]
            if "additionalProperties" in part:
                merged["additionalProperties"] = part["additionalProperties"]
        return merged

    def _resolve(self, ref: str, path: str) -> Any:
        target: Any = self.root_schema
        for part in ref[2:].split("/"):
            if not isinstance(target, dict) or part not in target:
                raise SchemaNotSupported(f"$ref {ref!r} points nowhere", path)
            target = target[part]
        return target

    # -- one method per type -----------------------------------------------------------------------
    def _string(self, schema: dict[str, Any], path: str) -> str:
        if "format" in schema:
            fmt = schema["format"]
            if fmt not in _FORMATS:
                raise SchemaNotSupported(
                    f"string format {fmt!r} is not supported (supported: "
                    f"{', '.join(sorted(_FORMATS))})",
                    path,
                )
            return self.add(f"{fmt}-string", f'"\\"" {_FORMATS[fmt]} "\\"" space')
        low = _count(schema, "minLength", 0, path)
        high = _count(schema, "maxLength", None, path)
        if low == 0 and high is None:
            return self.primitive("string")
        self.primitive("char")
        self.primitive("space")
        if high is not None and high < low:
            raise SchemaNotSupported("maxLength is below minLength", path)
        repeat = f"{{{low},{high if high is not None else ''}}}"
        return f'"\\"" char{repeat} "\\"" space'

    def _integer(self, schema: dict[str, Any], path: str) -> str:
        low = _bound(schema, True, path)
        high = _bound(schema, False, path)
        if low is None and high is None:
            return self.primitive("integer")
        if low is not None and high is not None and low > high:
            raise SchemaNotSupported("minimum is above maximum", path)
        self.primitive("space")
        return "( " + " | ".join(integer_range(low, high)) + " ) space"

    def _number(self, schema: dict[str, Any], path: str) -> str:
        return self.primitive("number")

    def _boolean(self, schema: dict[str, Any], path: str) -> str:
        return self.primitive("boolean")

    def _null(self, schema: dict[str, Any], path: str) -> str:
        return self.primitive("null")

    def _object(self, schema: dict[str, Any], path: str) -> str:
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaNotSupported("properties must be an object", path)
        required = schema.get("required", [])
        if not isinstance(required, list):
            raise SchemaNotSupported("required must be a list", path)
        missing = [name for name in required if name not in properties]
        # Without properties, any object; with them, no others unless the schema says so.
        extra = schema.get("additionalProperties", not properties)
        if missing and extra is False:
            raise SchemaNotSupported(f"required properties {missing} are not in properties", path)
        if not properties and extra is not False:
            value = self.schema(extra if isinstance(extra, dict) else True, f"{path}/ap")
            self.primitive("string")
            body = (
                f'"{{" space ( string ":" space {value} ( "," space string ":" space '
                f'{value} )* )? "}}" space'
            )
            return self.add(f"{path or 'root'}-object", body)
        self.primitive("space")
        pairs = {
            name: f'{literal(json.dumps(name))} space ":" space '
            f"{self.schema(sub, f'{path}/properties/{name}')}"
            for name, sub in properties.items()
        }
        # Required properties first, in schema order, then any subset of the optional ones.
        order = [n for n in properties if n in required] + [
            n for n in properties if n not in required
        ]
        mandatory = [pairs[n] for n in order if n in required]
        optional = [pairs[n] for n in order if n not in required]
        if mandatory:
            body = ' "," space '.join(mandatory)
            body += "".join(f' ( "," space {pair} )?' for pair in optional)
            inner = body
        elif optional:
            # Which optional property comes first decides where commas go.
            alternatives = []
            for first in range(len(optional)):
                rest = "".join(f' ( "," space {pair} )?' for pair in optional[first + 1 :])
                alternatives.append(optional[first] + rest)
            inner = "( " + " | ".join(alternatives) + " )?"
        else:
            inner = ""
        return self.add(f"{path or 'root'}-object", f'"{{" space {inner} "}}" space')

    def _array(self, schema: dict[str, Any], path: str) -> str:
        self.primitive("space")
        prefix = schema.get("prefixItems")
        if prefix is not None:
            if not isinstance(prefix, list) or not prefix:
                raise SchemaNotSupported("prefixItems must be a non-empty list", path)
            if schema.get("items", False) is not False:
                raise SchemaNotSupported("items after prefixItems is not supported", path)
            parts = [self.schema(item, f"{path}/prefixItems/{i}") for i, item in enumerate(prefix)]
            separator = ' "," space '
            return f'"[" space {separator.join(parts)} "]" space'
        item = self.schema(schema.get("items", True), f"{path}/items")
        low = _count(schema, "minItems", 0, path)
        high = _count(schema, "maxItems", None, path)
        if high is not None and high < low:
            raise SchemaNotSupported("maxItems is below minItems", path)
        if high == 0:
            return '"[" space "]" space'
        more_low = max(low - 1, 0)
        more_high = "" if high is None else str(high - 1)
        items = f'{item} ( "," space {item} ){{{more_low},{more_high}}}'
        body = f'"[" space {items} "]" space' if low > 0 else f'"[" space ( {items} )? "]" space'
        return self.add(f"{path or 'root'}-array", body)


def _count(schema: dict[str, Any], key: str, default: int | None, path: str) -> int | None:
    value = schema.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SchemaNotSupported(f"{key} must be a non-negative integer", path)
    return value


def _bound(schema: dict[str, Any], lower: bool, path: str) -> int | None:
    """The tightest integer bound from minimum/exclusiveMinimum (or the maximum pair)."""
    inclusive, exclusive = (
        ("minimum", "exclusiveMinimum") if lower else ("maximum", "exclusiveMaximum")
    )
    bounds = []
    for key in (inclusive, exclusive):
        if key not in schema:
            continue
        value = schema[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaNotSupported(f"{key} must be a number", path)
        if lower:
            bounds.append(math.floor(value) + 1 if key == exclusive else math.ceil(value))
        else:
            bounds.append(math.ceil(value) - 1 if key == exclusive else math.floor(value))
    if not bounds:
        return None
    return max(bounds) if lower else min(bounds)


def schema_grammar(schema: Any) -> str:
    """GBNF for documents valid against ``schema`` (raises :class:`SchemaNotSupported`)."""
    builder = GrammarBuilder(schema if isinstance(schema, dict) else {})
    root = builder.schema(schema)
    return builder.render(root)


def json_object_grammar() -> str:
    """GBNF for any JSON object (``response_format: {"type": "json_object"}``)."""
    builder = GrammarBuilder()
    return builder.render(builder.primitive("object"))
