"""The named events of LM Studio's chat stream, made from the chat stream's chunks.

``chat.start``, ``prompt_processing.*``, ``reasoning.*``, ``message.*``, with MCP servers
``tool_call.start``, ``tool_call.arguments`` and ``tool_call.success`` (or
``tool_call.failure``) for each call the server runs, then ``chat.end`` holding the whole
result, whose ``output`` lists the same items in the same order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from lmserve.api.common.chat import chat_chunks
from lmserve.api.common.errors import APIError
from lmserve.api.common.generation import Generation
from lmserve.api.common.tool_loop import CallFinished, CallStarted, ToolRounds
from lmserve.api.common.tools import arguments_object
from lmserve.mcp.toolset import CallOutcome, ServedTool


class ResultMaker(Protocol):
    """What the events need of their turn (``service.NativeChatTurn``): the result that
    ``chat.end`` holds, and the rounds when MCP servers take part; so this module never
    imports the service."""

    rounds: ToolRounds | None

    async def result(
        self, generation: Generation, output: list[dict[str, Any]]
    ) -> dict[str, Any]: ...


def tool_call_item(outcome: CallOutcome) -> dict[str, Any]:
    """A call the server ran, as an output item: ``tool_call``, or ``invalid_tool_call``
    when it has no result (``metadata.type``: LM Studio's ``invalid_arguments``, or
    lmserve's ``tool_error`` and ``call_failed``)."""
    tool = outcome.tool
    if outcome.ok:
        return {
            "type": "tool_call",
            "tool": tool.name,
            "arguments": arguments_object(outcome.arguments),
            "output": outcome.output,
            "provider_info": tool.use.provider,
        }
    return {
        "type": "invalid_tool_call",
        "reason": outcome.error,
        "metadata": {
            "type": outcome.error_kind,
            "tool_name": tool.name,
            "arguments": arguments_object(outcome.arguments),
            "provider_info": tool.use.provider,
        },
    }


def _call_fields(tool: ServedTool) -> dict[str, Any]:
    return {"tool": tool.name, "provider_info": tool.use.provider}


async def chat_events(
    turn: ResultMaker, generation: Generation, *, in_band_errors: bool = True
) -> AsyncIterator[dict[str, Any]]:
    """The stream's events; ``in_band_errors=False`` raises a failure instead (for a whole
    answer made from the events)."""
    yield {"type": "chat.start", "model_instance_id": generation.prepared.model.identifier}
    yield {"type": "prompt_processing.start"}
    output: list[dict[str, Any]] = []
    open_kind: str | None = None  # "reasoning" or "message", while one is streaming
    processed = False
    source = (
        turn.rounds.events(generation)
        if turn.rounds is not None
        else chat_chunks(generation, include_usage=False, progress=True)
    )
    try:
        async for chunk in source:
            if isinstance(chunk, CallStarted):
                if open_kind is not None:
                    yield {"type": f"{open_kind}.end"}
                    open_kind = None
                yield {"type": "tool_call.start", **_call_fields(chunk.tool)}
                yield {
                    "type": "tool_call.arguments",
                    **_call_fields(chunk.tool),
                    "arguments": arguments_object(chunk.arguments),
                }
                continue
            if isinstance(chunk, CallFinished):
                item = tool_call_item(chunk.outcome)
                output.append(item)
                if item["type"] == "tool_call":
                    yield {
                        "type": "tool_call.success",
                        **{k: v for k, v in item.items() if k != "type"},
                    }
                else:
                    yield {
                        "type": "tool_call.failure",
                        "reason": item["reason"],
                        "metadata": item["metadata"],
                    }
                continue
            if not isinstance(chunk, dict):
                continue  # approvals: the native chat asks for none
            if "prompt_progress" in chunk:
                fraction = round(chunk["prompt_progress"].fraction, 4)
                yield {"type": "prompt_processing.progress", "progress": fraction}
                continue
            delta = chunk["choices"][0]["delta"]
            for kind, piece in (
                ("reasoning", delta.get("reasoning_content")),
                ("message", delta.get("content")),
            ):
                if not piece:
                    continue
                if not processed:
                    processed = True
                    yield {"type": "prompt_processing.end"}
                if open_kind != kind:
                    if open_kind is not None:
                        yield {"type": f"{open_kind}.end"}
                    open_kind = kind
                    output.append({"type": kind, "content": ""})
                    yield {"type": f"{kind}.start"}
                output[-1]["content"] += piece
                yield {"type": f"{kind}.delta", "content": piece}
    except APIError as exc:
        if not in_band_errors:
            raise
        # The headers are gone: the failure goes in-band, and chat.end still comes.
        yield {
            "type": "error",
            "error": {"type": "unknown", "message": exc.message, "code": exc.code},
        }
    if not processed:
        yield {"type": "prompt_processing.end"}
    if open_kind is not None:
        yield {"type": f"{open_kind}.end"}
    if not output or output[-1]["type"] != "message":
        output.append({"type": "message", "content": ""})  # an answer always has one
    last = turn.rounds.last if turn.rounds is not None and turn.rounds.last else generation
    yield {"type": "chat.end", "result": await turn.result(last, output)}
