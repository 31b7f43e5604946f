"""Function calling: tools into the prompt, tool calls out of the text.

Models differ in how they write a call; we read the common ones:

- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
- Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``
- Llama 3: ``<|python_tag|>{"name": ..., "parameters": {...}}`` or that JSON as the whole reply

A model whose chat template knows tools gets them through the template (``tools``); one whose
template does not is told about them in its system prompt and asked for the Hermes form.  When
a call is required (``tool_choice: "required"`` or a named function) a grammar forces the Hermes
form with arguments that match the function's schema, so the call always parses.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import llguidance
from starlette.responses import Response

from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.protocol import NamedToolChoice, ToolChoice, ToolDefinition
from lmserve.api.common.structured import JSON_LAYOUT, checked, lark_literal, schema_to_grammar

logger = logging.getLogger("lmserve.api")

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# Names the tools of a request that only the real API's servers run (web search, code
# execution...), which were left out of the prompt instead of failing the request.
TOOLS_LEFT_OUT_HEADER = "x-lmserve-tools-left-out"
_MARKERS = (OPEN, "[TOOL_CALLS]", "<|python_tag|>")


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def note_tools_left_out(request_id: str, kinds: list[str]) -> None:
    """Say in the log which server-run tools a request offered that were left out."""
    if kinds:
        logger.info(
            "%s: left out hosted tools this server cannot run: %s", request_id, ", ".join(kinds)
        )


def mark_tools_left_out(answer: Any, injected: Response, kinds: list[str]) -> None:
    """Name the tools left out in the answer's header: a streamed answer is a response of its
    own; any other takes the headers of the route's injected ``Response``."""
    if kinds:
        target = answer if isinstance(answer, Response) else injected
        target.headers[TOOLS_LEFT_OUT_HEADER] = ", ".join(kinds)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def active_tools(
    tools: list[ToolDefinition] | None, choice: ToolChoice | None
) -> list[ToolDefinition]:
    """The tools the model may call under ``tool_choice`` (none → no tools)."""
    if not tools or choice == "none":
        return []
    if isinstance(choice, NamedToolChoice):
        named = [tool for tool in tools if tool.function.name == choice.function.name]
        if not named:
            raise InvalidRequestError(
                f"tool_choice names '{choice.function.name}', which is not in 'tools'.",
                param="tool_choice",
            )
        return named
    return list(tools)


def tools_for_template(tools: list[ToolDefinition]) -> list[dict[str, Any]]:
    """Tools as Hugging Face chat templates expect them."""
    return [tool.model_dump(exclude_none=True) for tool in tools]


def system_instructions(tools: list[ToolDefinition]) -> str:
    """Tool use explained to a model whose template has no place for tools."""
    described = "\n".join(
        json.dumps(tool.function.model_dump(exclude_none=True), ensure_ascii=False)
        for tool in tools
    )
    return (
        "You can call functions to help answer. The functions, as JSON schemas:\n"
        f"<tools>\n{described}\n</tools>\n"
        "To call a function, reply with a line of exactly this form for each call:\n"
        f'{OPEN}{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}{CLOSE}'
    )


def _rebased(schema: Any, base: str) -> Any:
    """``schema`` placed at ``base`` inside another: its local ``$ref``s point there."""
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rebased = {key: _rebased(value, base) for key, value in schema.items()}
    ref = rebased.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        rebased["$ref"] = "#" + base + ref[1:]
    return rebased


def call_grammar(tools: list[ToolDefinition], parallel: bool) -> str:
    """The grammar of one (or, with ``parallel``, one or more) Hermes-form calls of ``tools``:
    each call's JSON names a tool and gives arguments valid against its parameters."""
    calls = []
    for index, tool in enumerate(tools):
        parameters = tool.function.parameters or {"type": "object"}
        schema_to_grammar(parameters, f"tools[{index}].function.parameters")  # names the tool
        call = {
            "x-guidance": JSON_LAYOUT,
            "type": "object",
            "properties": {
                "name": {"const": tool.function.name},
                "arguments": _rebased(parameters, "/properties/arguments"),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        calls.append(f"call_{index}: %json {json.dumps(call, ensure_ascii=False)}")
    names = " | ".join(f"call_{index}" for index in range(len(tools)))
    block = f"{lark_literal(OPEN)} ({names}) {lark_literal(CLOSE)}"
    lark = "\n".join(
        [
            "start: tool_call" + (' ("\\n" tool_call)*' if parallel else ""),
            f"tool_call: {block}",
            *calls,
        ]
    )
    return checked(llguidance.LLMatcher.grammar_from_lark(lark), "tools", "tool-call grammar")


def _decode_objects(text: str) -> Iterator[tuple[int, int, Any]]:
    """JSON values found in ``text``: (start, end, value), scanning left to right."""
    decoder = json.JSONDecoder()
    index = 0
    while index < len(text):
        start = min(
            (i for i in (text.find("{", index), text.find("[", index)) if i >= 0), default=-1
        )
        if start < 0:
            return
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        yield start, end, value
        index = end


def _as_call(value: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), name, json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(text: str, tools: list[ToolDefinition]) -> tuple[str | None, list[ToolCall]]:
    """Split a reply into its content (before the first call) and its tool calls."""
    names = {tool.function.name for tool in tools}
    if not names:
        return text, []
    marker = min((i for i in (text.find(m) for m in _MARKERS) if i >= 0), default=-1)
    if marker < 0:
        stripped = text.strip()
        if stripped.startswith("{"):  # Llama 3: the whole reply is the call
            calls = [c for _, _, v in _decode_objects(stripped) if (c := _as_call(v, names))]
            if calls:
                return None, calls
        return text, []
    calls: list[ToolCall] = []
    for _, _, value in _decode_objects(text[marker:]):
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item, names)
            if call is not None:
                calls.append(call)
    if not calls:
        return text, []
    content = text[:marker].strip()
    return content or None, calls


class ToolCallStream:
    """Streams a reply's content while holding back what may be a tool call.

    Text that could be the start of a call marker waits for the next piece; once a marker
    (or, for Llama 3, an opening brace as the reply's first character) shows up, the rest is
    kept until the end and parsed then, so calls come out whole: their name in one delta,
    their arguments in the next, as OpenAI streams them.
    """

    def __init__(self, tools: list[ToolDefinition]) -> None:
        self._tools = tools
        self._pending = ""
        self._held = ""
        self._holding = False
        self._started = False

    def feed(self, text: str) -> str:
        """Content that is safe to send now."""
        if self._holding:
            self._held += text
            return ""
        pending = self._pending + text
        if not self._started and pending.strip():
            self._started = True
            if pending.lstrip().startswith("{"):
                self._holding, self._held, self._pending = True, pending, ""
                return ""
        for marker in _MARKERS:
            index = pending.find(marker)
            if index >= 0:
                self._holding, self._held, self._pending = True, pending[index:], ""
                return pending[:index]
        keep = _partial_marker(pending)
        self._pending = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content still to send, the calls) at the end of the reply."""
        rest, self._pending = self._pending, ""
        if not self._holding:
            return rest, []
        content, calls = parse_tool_calls(self._held, self._tools)
        if not calls:
            return rest + self._held, []
        return rest + (content or ""), calls


def _partial_marker(text: str) -> int:
    """Length of the longest suffix of ``text`` that starts a call marker."""
    best = 0
    for marker in _MARKERS:
        for size in range(min(len(text), len(marker) - 1), best, -1):
            if marker.startswith(text[-size:]):
                best = size
                break
    return best


def tool_call_deltas(index: int, call: ToolCall) -> list[dict[str, Any]]:
    """OpenAI's streaming shape for one call: id, type and name first, then the arguments."""
    return [
        {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        },
        {"index": index, "function": {"arguments": call.arguments}},
    ]


def history_call_text(name: str, arguments: str) -> str:
    """An earlier assistant call, written back into the prompt in the Hermes form."""
    try:
        parsed: Any = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        parsed = arguments
    return f"{OPEN}{json.dumps({'name': name, 'arguments': parsed}, ensure_ascii=False)}{CLOSE}"


def arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return arguments


_NATIVE_HINTS = re.compile(r"\btools\b|tool_calls|\bTOOL_CALLS\b")


def template_knows_tools(source: str) -> bool:
    return bool(_NATIVE_HINTS.search(source))
