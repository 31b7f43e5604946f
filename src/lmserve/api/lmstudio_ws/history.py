"""The SDKs' chat history as chat messages, and a history rendered by a client's own prompt
template (how the SDKs ask for a text completion).

A history message is a role and a list of parts: text, files (images, which these text
models cannot read), an assistant's tool call requests, and tool results (one chat message
each).  A call without an id gets one, so its result can name it.
"""

from __future__ import annotations

import json
from typing import Any

from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.protocol import ChatMessage, ToolCall
from lmserve.api.common.tools import new_call_id
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
    for part in message.content:
        if isinstance(part, FilePart):
            raise InvalidRequestError(
                f"history.messages[{index}] holds a file ({part.name or part.fileType}): the "
                "models lmserve serves read text only.",
                param=f"history.messages[{index}]",
                code="unsupported_content",
            )


def _text(message: HistoryMessage) -> str:
    return "\n".join(part.text for part in message.content if isinstance(part, TextPart))


def chat_messages(history: ChatHistory, *, skip_files: bool = False) -> list[ChatMessage]:
    """The history as chat messages, in order.  A file is refused, unless ``skip_files`` (only
    rendering a template, not predicting) says to leave it out: no file can be on this
    server, as it takes no uploads."""
    if not history.messages:
        raise InvalidRequestError("The chat history has no messages.", param="history")
    messages: list[ChatMessage] = []
    for index, message in enumerate(history.messages):
        if not skip_files:
            _refuse_files(message, index)
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
        messages.append(
            ChatMessage(role=message.role, content=_text(message), tool_calls=calls or None)
        )
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
