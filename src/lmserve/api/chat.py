"""Chat completions: messages through the model's chat template, answers in OpenAI's shape.

It knows nothing of HTTP: the router hands it a validated request and a model, and sends on
what comes back (a :class:`ChatCompletion`, or stream chunks as plain dicts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from lmserve.api.errors import InvalidRequestError
from lmserve.api.generation import (
    SYSTEM_FINGERPRINT,
    ChunkMaker,
    Generation,
    Prepared,
    prepare,
    public_finish_reason,
)
from lmserve.api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    TextContentPart,
)
from lmserve.engine.types import TextDelta
from lmserve.models.loader import LoadedModel


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: ``role`` and string ``content``."""
    rendered = []
    for index, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, TextContentPart):
                    raise InvalidRequestError(
                        "This model does not accept image inputs; send text content only.",
                        param=f"messages[{index}].content",
                        code="unsupported_content",
                    )
                parts.append(part.text)
            content = "\n".join(parts)
        # OpenAI's "developer" role is the system role under a newer name.
        role = "system" if message.role == "developer" else message.role
        item: dict[str, Any] = {"role": role, "content": content or ""}
        if message.name:
            item["name"] = message.name
        rendered.append(item)
    return rendered


def prepare_chat(body: ChatCompletionRequest, model: LoadedModel) -> Prepared:
    """Render and tokenize the conversation and check it fits.

    Raises ``TemplateRenderError`` or :class:`InvalidRequestError`.
    """
    if body.response_format is not None and body.response_format.type != "text":
        raise InvalidRequestError(
            f"response_format type '{body.response_format.type}' is not supported yet.",
            param="response_format",
            code="unsupported_value",
        )
    prompt = model.template.render(template_messages(body.messages))
    tokens = model.llama.tokenize_prompt(prompt)
    return prepare(
        body, model, [prompt], [tokens], id_prefix="chatcmpl", param="messages", what="messages"
    )


async def chat_completion(generation: Generation) -> ChatCompletion:
    results = await generation.collect()
    prepared = generation.prepared
    return ChatCompletion(
        id=prepared.request_id,
        model=prepared.model.identifier,
        system_fingerprint=SYSTEM_FINGERPRINT,
        choices=[
            Choice(
                index=index,
                message=AssistantMessage(content=text),
                finish_reason=public_finish_reason(done),
            )
            for index, (text, done) in enumerate(results)
        ],
        usage=generation.usage,
    )


async def chat_chunks(generation: Generation, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    """``chat.completion.chunk`` dicts: role first, then content deltas, finish, usage."""
    chunks = ChunkMaker(generation, "chat.completion.chunk", include_usage)

    def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chunks.choice(
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        )

    for index in range(len(generation.streams)):
        yield choice(index, {"role": "assistant", "content": ""})
    async for index, event in generation.events():
        if isinstance(event, TextDelta):
            yield choice(index, {"content": event.text})
        else:
            yield choice(index, {}, public_finish_reason(event))
    if include_usage:
        yield chunks.usage()
