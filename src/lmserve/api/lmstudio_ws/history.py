"""The SDKs' chat history as chat messages, and a history rendered by a client's own prompt
template (how the SDKs ask for a text completion).

A history message is a role and a list of parts: text, files (images the client uploaded
first, kept in :mod:`lmserve.api.lmstudio_ws.files`), an assistant's tool call requests, and
tool results (one chat message each).  A user message's text and images keep their order, an
image becoming chat's image part (a ``data:`` URL of its bytes).  A call without an id gets
one, so its result can name it.
"""

from __future__ import annotations

import json
from typing import Any

from lmserve.api.common.chat import unsupported_content
from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.protocol import (
    ChatMessage,
    ContentPart,
    ImageContentPart,
    TextContentPart,
    ToolCall,
    parts_content,
)
from lmserve.api.common.tools import new_call_id
from lmserve.api.lmstudio_ws.files import FileStore
from lmserve.api.lmstudio_ws.protocol import (
    ChatHistory,
    FilePart,
    HistoryMessage,
    TextPart,
    ToolCallRequestPart,
    ToolCallResultPart,
)
from lmserve.engine.template import ChatTemplate


def _refuse_files(message: HistoryMessage, index: int) -> None:
    """For a prompt template of the client's own, which renders text only."""
    for part in message.content:
        if isinstance(part, FilePart):
            raise unsupported_content(
                f"history.messages[{index}] holds a file ({part.name or part.fileType}): a "
                "prompt template of the client's own renders text only.",
                f"history.messages[{index}]",
            )


def _text(message: HistoryMessage) -> str:
    return "\n".join(part.text for part in message.content if isinstance(part, TextPart))


def _image(part: FilePart, files: FileStore | None, param: str) -> ImageContentPart:
    stored = files.get(part.identifier) if files is not None else None
    if stored is None:
        reason = files.forgotten(part.identifier) if files is not None else "No files here."
        raise InvalidRequestError(reason, param=param, code="file_not_found")
    if stored.media_type is None:
        raise unsupported_content(
            f"{param} is a file of type {stored.file_type} ({stored.name}): only images are "
            "read, by a model with a vision projector.",
            param,
        )
    return ImageContentPart.of(stored.data_url)


def _content(
    message: HistoryMessage, index: int, files: FileStore | None, skip_files: bool
) -> str | list[ContentPart]:
    """A message's text, and a user message's images where they are among it."""
    parts: list[TextContentPart | ImageContentPart] = []
    for position, part in enumerate(message.content):
        param = f"history.messages[{index}].content[{position}]"
        if isinstance(part, TextPart):
            parts.append(TextContentPart(type="text", text=part.text))
        elif not isinstance(part, FilePart) or skip_files:
            continue
        elif message.role != "user":
            raise unsupported_content("Images belong in user messages.", param)
        else:
            parts.append(_image(part, files, param))
    return parts_content(parts)


def chat_messages(
    history: ChatHistory, files: FileStore | None = None, *, skip_files: bool = False
) -> list[ChatMessage]:
    """The history as chat messages, in order, its files read from ``files``; ``skip_files``
    (only rendering a template, not predicting) leaves files out."""
    if not history.messages:
        raise InvalidRequestError("The chat history has no messages.", param="history")
    messages: list[ChatMessage] = []
    for index, message in enumerate(history.messages):
        if message.role == "tool":
            messages += [
                ChatMessage(role="tool", content=part.content, tool_call_id=part.toolCallId)
                for part in message.content
                if isinstance(part, ToolCallResultPart)
            ]
            continue
        calls = [
            ToolCall.of(
                part.toolCallRequest.id or new_call_id(),
                part.toolCallRequest.name,
                json.dumps(part.toolCallRequest.arguments or {}, ensure_ascii=False),
            )
            for part in message.content
            if isinstance(part, ToolCallRequestPart)
        ]
        content = _content(message, index, files, skip_files)
        messages.append(ChatMessage(role=message.role, content=content, tool_calls=calls or None))
    return messages


def render_with_template(
    history: ChatHistory, template: dict[str, Any], model_template: ChatTemplate
) -> str:
    """The prompt a client's own template makes of the history: a Jinja template (rendered
    in the same sandbox as models' templates) or LM Studio's manual before/after strings."""
    for index, message in enumerate(history.messages):
        _refuse_files(message, index)
    messages = [{"role": m.role, "content": _text(m)} for m in history.messages]
    if template["type"] == "manual":
        return _manual(messages, template)
    source = template.get("template")
    if not isinstance(source, str):
        raise InvalidRequestError("The Jinja prompt template has no 'template' text.")
    jinja = ChatTemplate(
        source.strip(),
        bos_token=str(template.get("bosToken", model_template.bos_token)),
        eos_token=str(template.get("eosToken", model_template.eos_token)),
    )
    if jinja.compile_error:
        raise InvalidRequestError(f"The prompt template does not compile: {jinja.compile_error}")
    return jinja.render(messages, add_generation_prompt=True)


def _manual(messages: list[dict[str, str]], template: dict[str, Any]) -> str:
    def part(name: str) -> str:
        value = template.get(name, "")
        return value if isinstance(value, str) else ""

    prompt = ""
    for message in messages:
        role = message["role"].capitalize()
        prompt += part(f"before{role}") + message["content"] + part(f"after{role}")
    return prompt + part("beforeAssistant")
