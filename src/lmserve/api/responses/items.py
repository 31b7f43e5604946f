"""The items of the Responses API: input items as chat messages, a chat answer as output
items, and stored items listed back (``GET /v1/responses/{id}/input_items``)."""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from lmserve.api.common.chat import unsupported_content
from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.protocol import (
    AssistantMessage,
    ChatMessage,
    ContentPart,
    ImageContentPart,
    TextContentPart,
    ToolCall,
    parts_content,
)
from lmserve.api.responses.protocol import ImagePart, InputItem, TextPart
from lmserve.api.responses.tools import ToolNames, call_name


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_text(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    }


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [reasoning_text(text)],
        "status": status,
    }


def mcp_call_item(
    item_id: str, server_label: str, name: str, arguments: str, approval_request_id: str | None
) -> dict[str, Any]:
    """A call of an MCP tool the server runs, in progress (its output comes later)."""
    return {
        "type": "mcp_call",
        "id": item_id,
        "server_label": server_label,
        "name": name,
        "arguments": arguments,
        "output": None,
        "error": None,
        "status": "in_progress",
        "approval_request_id": approval_request_id,
    }


def function_call_item(
    item_id: str,
    call_id: str,
    name: str,
    arguments: str,
    status: str = "completed",
    namespace: str | None = None,
) -> dict[str, Any]:
    item = {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }
    if namespace is not None:  # a function of a namespace tool, as OpenAI marks it
        item["namespace"] = namespace
    return item


def output_items(message: AssistantMessage, status: str, names: ToolNames) -> list[dict[str, Any]]:
    """A chat answer as output items: reasoning, then the message, then the calls.

    The message is left out only when the model called tools and wrote nothing else, so a
    plain answer always has one (``response.output_text`` works even for an empty reply).
    """
    items = []
    if message.reasoning_content:
        items.append(reasoning_item(new_item_id("rs"), message.reasoning_content))
    if message.content or not message.tool_calls:
        items.append(message_item(new_item_id("msg"), message.content or "", status))
    for call in message.tool_calls or []:
        namespace, name = names.split(call.function.name)
        items.append(
            function_call_item(
                new_item_id("fc"), call.id, name, call.function.arguments, namespace=namespace
            )
        )
    return items


def _image(part: ImagePart, param: str) -> ImageContentPart:
    if part.image_url is not None:
        return ImageContentPart.of(part.image_url)
    if part.file_id is not None:
        raise unsupported_content(
            "'file_id' names a file of OpenAI's Files API, which lmserve does not serve: send "
            "the image as 'image_url' (a data: URL).",
            f"{param}.file_id",
        )
    raise InvalidRequestError("An 'input_image' part needs an 'image_url'.", param=param)


def _content(content: str | list[Any], param: str, *, images: bool) -> str | list[ContentPart]:
    """A message's or a call output's content as chat content: its text and, where
    ``images`` allows them (user messages, function call outputs), its images, in order."""
    if isinstance(content, str):
        return content
    parts: list[TextContentPart | ImageContentPart] = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if isinstance(part, TextPart):
            parts.append(TextContentPart(type="text", text=part.text))
        elif isinstance(part, ImagePart) and images:
            parts.append(_image(part, where))
        elif isinstance(part, ImagePart):
            raise unsupported_content(
                "Images belong in user messages and function call outputs.", where
            )
        else:
            raise unsupported_content(
                "File and audio inputs are not supported: lmserve's models read text, and "
                "images where the model has a vision projector.",
                where,
            )
    return parts_content(parts)


def chat_messages(
    items: list[InputItem], instructions: str | None, first_new: int = 0
) -> list[ChatMessage]:
    """Input items as chat messages; items before ``first_new`` come from stored history.

    Consecutive function calls (and the assistant text before them) are one assistant turn,
    as chat templates expect; reasoning items are left out.
    """
    messages = [ChatMessage(role="system", content=instructions)] if instructions else []
    for index, item in enumerate(items):
        param = f"input[{index - first_new}]"
        if item.type == "message":
            assert item.role is not None and item.content is not None  # the model checks them
            images = item.role == "user"
            content = _content(item.content, f"{param}.content", images=images)
            messages.append(ChatMessage(role=item.role, content=content))
        elif item.type == "function_call":
            assert item.call_id is not None and item.name is not None
            call = ToolCall.of(item.call_id, call_name(item.name, item.namespace), item.arguments)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif item.type == "function_call_output":
            assert item.output is not None
            content = _content(item.output, f"{param}.output", images=True)
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=content))
        elif item.type == "mcp_call":
            # A call the server ran: the model sees it and its result, as a function's.
            assert item.name is not None
            call_id = item.id or new_item_id("mcp")
            call = ToolCall.of(call_id, item.name, item.arguments)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and not last.tool_calls:
                last.tool_calls = [call]
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
            result = item.output if isinstance(item.output, str) else None
            if result is None:
                error = item.error if isinstance(item.error, str) else json.dumps(item.error)
                result = f"Error: {error}"
            messages.append(ChatMessage(role="tool", tool_call_id=call_id, content=result))
        # mcp_list_tools, approval requests and answers: the turn deals with them.
    return messages


def public_item(item: InputItem) -> dict[str, Any]:
    """An input item as the API lists it back: with an id, text in typed content parts."""
    if item.type == "message":
        kind = "output_text" if item.role == "assistant" else "input_text"
        content = item.content or ""
        if isinstance(content, str):
            parts = [output_text(content) if kind == "output_text" else _input_text(content)]
        else:
            parts = [part.model_dump() for part in content]
        return {
            "type": "message",
            "id": new_item_id("msg"),
            "status": "completed",
            "role": item.role,
            "content": parts,
        }
    if item.type == "function_call":
        assert item.call_id is not None and item.name is not None  # the model checks them
        return function_call_item(
            new_item_id("fc"), item.call_id, item.name, item.arguments, namespace=item.namespace
        )
    if item.type == "function_call_output":
        output = (
            item.output
            if isinstance(item.output, str)
            else [part.model_dump() for part in item.output or []]
        )
        return {
            "type": "function_call_output",
            "id": new_item_id("fco"),
            "call_id": item.call_id,
            "output": output,
            "status": "completed",
        }
    if item.type.startswith("mcp_"):
        fields = item.model_dump(exclude_none=True, exclude={"role", "content", "call_id"})
        return {**fields, "id": item.id or new_item_id("mcp")}
    return {"type": "reasoning", "id": new_item_id("rs"), "summary": []}


def _input_text(text: str) -> dict[str, Any]:
    return {"type": "input_text", "text": text}


def item_page(
    items: list[dict[str, Any]],
    *,
    limit: int,
    order: Literal["asc", "desc"],
    after: str | None,
    before: str | None,
) -> dict[str, Any]:
    """One page of ``items`` (oldest first) in OpenAI's list shape, cursors by item id."""
    ordered = items if order == "asc" else items[::-1]
    ids = [item["id"] for item in ordered]
    start = ids.index(after) + 1 if after in ids else 0
    end = ids.index(before) if before in ids else len(ordered)
    window = ordered[start:end]
    data = window[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(window) > limit,
    }
