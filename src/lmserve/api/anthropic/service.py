"""Anthropic's Messages API, served as a chat completion.

Anthropic's clients take the server's root as base URL (``http://localhost:1234``) and send
their key as ``x-api-key`` (which the API key guard accepts).  A request is mapped onto a chat
completion: ``system`` becomes the system message, ``tool_use`` and ``tool_result`` blocks
become chat's assistant tool calls and tool messages, ``image`` blocks (in user messages and
tool results) chat's image parts, in their place among the text, and ``tool_choice``
``any``/``tool`` force a call through chat's call grammar.  The message comes from
:func:`chat_completion`, the events (:mod:`lmserve.api.anthropic.events`) from its chunks, so
reasoning, tool calls and streaming hold-back behave exactly as on the OpenAI routes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any, Literal

from lmserve.api.anthropic.events import MessageEvents, stop_of, tool_input, tool_use_id
from lmserve.api.anthropic.protocol import (
    Base64Source,
    CountTokensRequest,
    ImageBlock,
    McpToolConfiguration,
    McpToolResultBlock,
    McpToolUseBlock,
    MediaBlock,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)
from lmserve.api.common.chat import (
    ChatTurn,
    build_chat_request,
    chat_completion,
    text_of,
    unsupported_content,
)
from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.generation import Generation
from lmserve.api.common.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionDefinition,
    ImageContentPart,
    NamedToolChoice,
    ResponseFormat,
    TextContentPart,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    parts_content,
)
from lmserve.api.common.tool_loop import ToolRounds, url_use
from lmserve.config import McpSettings
from lmserve.mcp.toolset import ServerUse

# -- request → chat ---------------------------------------------------------------------------


def _unsupported(param: str) -> InvalidRequestError:
    return unsupported_content(
        "Document and search result blocks are not supported: lmserve's models read text, "
        "and images where the model has a vision projector.",
        param,
    )


def _text_only(param: str) -> InvalidRequestError:
    return unsupported_content(
        "Only text is read here: images belong in user messages and tool results.", param
    )


def _texts(blocks: str | list[Any] | None, param: str) -> str:
    return text_of(blocks, TextBlock, lambda index: _text_only(f"{param}[{index}]"))


def image_part(block: ImageBlock, param: str) -> ImageContentPart:
    """An image block as chat's image part: base64 data as a ``data:`` URL, a URL as it is."""
    source = block.source
    if isinstance(source, Base64Source):
        return ImageContentPart.of(f"data:{source.media_type};base64,{source.data}")
    if isinstance(source, UrlSource):
        return ImageContentPart.of(source.url)
    raise unsupported_content(
        "Image sources of type 'file' name a file of Anthropic's Files API, which lmserve does "
        "not serve: send the image as base64 data or a URL.",
        f"{param}.source",
    )


Part = TextContentPart | ImageContentPart


def _part(block: Any, param: str) -> Part:
    """A text or image block of user content as chat's part; anything else is refused."""
    if isinstance(block, TextBlock):
        return TextContentPart(type="text", text=block.text)
    if isinstance(block, ImageBlock):
        return image_part(block, param)
    raise _unsupported(param)


def _tool_result(block: ToolResultBlock, param: str) -> ChatMessage:
    param = f"{param}.content"
    blocks = block.content
    parts = (
        [TextContentPart(type="text", text=blocks)]
        if isinstance(blocks, str)
        else [_part(part, f"{param}[{index}]") for index, part in enumerate(blocks)]
    )
    if block.is_error:
        # Chat templates have no place for the flag; the model is told in words instead.
        first = parts[0] if parts else None
        if isinstance(first, TextContentPart):
            parts[0] = TextContentPart(type="text", text=f"Error: {first.text}")
        else:
            parts.insert(0, TextContentPart(type="text", text="Error:"))
    content = parts_content(parts)
    return ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=content)


def _system_prompt(body: CountTokensRequest) -> list[ChatMessage]:
    """The system prompt, with the text of system messages inside ``messages`` (Claude Code
    sends them) joined to it in order: many chat templates (Gemma's, Llama's) take one
    system message, first, only."""
    system = [_texts(body.system, "system")]
    for index, message in enumerate(body.messages):
        if message.role == "system":
            system.append(_texts(message.content, f"messages[{index}].content"))
    if all(message.role == "system" for message in body.messages):
        raise InvalidRequestError(
            "messages: at least one user or assistant message is required", param="messages"
        )
    system_prompt = "\n\n".join(text for text in system if text)
    return [ChatMessage(role="system", content=system_prompt)] if system_prompt else []


def _turn(role: Literal["user", "assistant"], blocks: list[Any], param: str) -> list[ChatMessage]:
    """One message's blocks as chat messages: its tool results (one tool message each),
    then its text and images in their order, with its tool calls."""
    parts: list[Part] = []
    calls: list[ToolCall] = []
    results: list[ChatMessage] = []
    for position, block in enumerate(blocks):
        where = f"{param}[{position}]"
        if isinstance(block, TextBlock | ImageBlock):
            if isinstance(block, ImageBlock) and role != "user":
                raise InvalidRequestError("'image' blocks belong in user messages.", param=where)
            parts.append(_part(block, where))
        elif isinstance(block, MediaBlock):
            raise _unsupported(where)
        elif isinstance(block, ToolUseBlock):
            if role != "assistant":
                raise InvalidRequestError(
                    "'tool_use' blocks belong in assistant messages.", param=where
                )
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(ToolCall.of(block.id, block.name, arguments))
        elif isinstance(block, ToolResultBlock):
            if role != "user":
                raise InvalidRequestError(
                    "'tool_result' blocks belong in user messages.", param=where
                )
            results.append(_tool_result(block, where))
        elif isinstance(block, McpToolUseBlock | McpToolResultBlock):
            if role != "assistant":
                raise InvalidRequestError(
                    f"'{block.type}' blocks belong in assistant messages.", param=where
                )
            if isinstance(block, McpToolUseBlock):
                arguments = json.dumps(block.input, ensure_ascii=False)
                calls.append(ToolCall.of(block.id, block.name, arguments))
                continue
            # The server ran the call within this answer: what came before it is one
            # assistant message, its result a tool message, and the answer goes on after.
            text = block.content if isinstance(block.content, str) else _texts(block.content, where)
            content = f"Error: {text}" if block.is_error else text
            results.append(
                ChatMessage(
                    role=role, content=parts_content(parts) or None, tool_calls=calls or None
                )
            )
            results.append(
                ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=content)
            )
            parts, calls = [], []
        # Thinking blocks of earlier answers are left out, as reasoning models expect.
    # Anthropic puts a turn's tool results before its text; chat has them as tool messages.
    if parts or calls or not results:
        content = parts_content(parts) if parts or not calls else None
        results.append(ChatMessage(role=role, content=content, tool_calls=calls or None))
    return results


def chat_messages(body: CountTokensRequest) -> list[ChatMessage]:
    """The conversation as chat messages: the system prompt, then each turn's."""
    messages = _system_prompt(body)
    for index, message in enumerate(body.messages):
        if message.role == "system":
            continue
        if isinstance(message.content, str):
            messages.append(ChatMessage(role=message.role, content=message.content))
        else:
            messages += _turn(message.role, message.content, f"messages[{index}].content")
    return messages


def _prefilled(messages: list[ChatMessage], body: CountTokensRequest) -> bool:
    """Whether the conversation ends with an assistant's text, which the answer continues."""
    final = messages[-1] if messages else None
    if final is None or final.role != "assistant" or final.tool_calls:
        return False
    if isinstance(final.content, str) and final.content != final.content.rstrip():
        # Anthropic refuses it too: the model would continue after a space it cannot take back.
        raise InvalidRequestError(
            "final assistant content cannot end with trailing whitespace",
            param=f"messages[{len(body.messages) - 1}].content",
        )
    return True


# Anthropic's tool choices in chat's words ("tool" names one: see _tool_choice).
_CHOICES: dict[str, ToolChoice] = {"auto": "auto", "any": "required", "none": "none"}


def _tool_choice(body: CountTokensRequest) -> ToolChoice | None:
    choice = body.tool_choice
    if choice is None:
        return None
    if choice.type == "tool":
        assert choice.name is not None  # the protocol model checks it
        return NamedToolChoice.of(choice.name)
    return _CHOICES[choice.type]


def _response_format(body: MessagesRequest) -> ResponseFormat | None:
    output_format = body.output_config.format if body.output_config else None
    if output_format is None:
        return None
    json_schema = {"name": "output", "schema": output_format.schema_}
    return ResponseFormat.model_validate({"type": "json_schema", "json_schema": json_schema})


def mcp_uses(body: MessagesRequest, settings: McpSettings) -> list[ServerUse]:
    """The request's ``mcp_servers`` (those whose tools are enabled) as servers."""
    uses = []
    for index, server in enumerate(body.mcp_servers or []):
        config = server.tool_configuration or McpToolConfiguration()
        if not config.enabled:
            continue
        headers = (
            {"Authorization": f"Bearer {server.authorization_token}"}
            if server.authorization_token
            else None
        )
        uses.append(
            url_use(
                settings,
                server.name,
                server.url,
                headers=headers,
                allowed_tools=config.allowed_tools,
                provider={"type": "ephemeral_mcp", "server_label": server.name},
                param=f"mcp_servers[{index}]",
            )
        )
    return uses


def chat_request(
    body: CountTokensRequest, server_tools: list[ToolDefinition] | None = None
) -> ChatCompletionRequest:
    tools = [
        ToolDefinition(
            function=FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.input_schema
            )
        )
        for tool in body.tools or []
        if not tool.is_server_tool
    ] + (server_tools or [])
    sampling: dict[str, Any] = {}
    if isinstance(body, MessagesRequest):
        sampling = {
            "max_tokens": body.max_tokens,
            "stop": body.stop_sequences,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": body.top_k,
            "seed": body.seed,
            "response_format": _response_format(body),
            "stream": body.stream,
            "ttl": body.ttl,
            "speculative": body.speculative,
            "draft_model": body.draft_model,
        }
    messages = chat_messages(body)
    return build_chat_request(
        model=body.model,
        messages=messages,
        continue_final_message=_prefilled(messages, body),
        tools=tools or None,
        tool_choice=_tool_choice(body),
        parallel_tool_calls=not (body.tool_choice and body.tool_choice.disable_parallel_tool_use),
        **sampling,
    )


class MessageTurn(ChatTurn):
    """One Messages request: its id, and the message it makes."""

    def __init__(self) -> None:
        super().__init__(f"msg_{secrets.token_hex(12)}")
        self.rounds: ToolRounds | None = None

    def message(
        self,
        content: list[dict[str, Any]],
        stop: tuple[str | None, str | None],
        usage: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.prepared.model.identifier,
            "content": content,
            "stop_reason": stop[0],
            "stop_sequence": stop[1],
            "usage": usage,
        }

    def usage(self, generation: Generation) -> dict[str, Any]:
        # Anthropic counts cached prompt tokens apart: input + cache reads = the whole prompt.
        rounds = self.rounds
        usage = rounds.usage if rounds is not None and rounds.usage else generation.usage
        cached = usage.prompt_tokens_details.cached_tokens
        return {
            "input_tokens": usage.prompt_tokens - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": usage.completion_tokens,
        }

    async def respond(self, generation: Generation) -> dict[str, Any]:
        if self.rounds is not None:
            events = MessageEvents(self, generation, in_band_errors=False)
            async for _ in events.run():
                pass
            return events.whole_message()
        completion = await chat_completion(generation)
        choice = completion.choices[0]
        answer = choice.message
        content: list[dict[str, Any]] = []
        if answer.reasoning_content:
            content.append(
                {"type": "thinking", "thinking": answer.reasoning_content, "signature": ""}
            )
        if answer.content or not answer.tool_calls:
            content.append({"type": "text", "text": answer.content or ""})
        for call in answer.tool_calls or []:
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_use_id(call.id),
                    "name": call.function.name,
                    "input": tool_input(call.function.arguments),
                }
            )
        stop = stop_of(choice.finish_reason, generation.finished[0])
        return self.message(content, stop, self.usage(generation))

    def events(self, generation: Generation) -> AsyncIterator[dict[str, Any]]:
        return MessageEvents(self, generation).run()
