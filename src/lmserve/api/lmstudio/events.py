"""The named events of LM Studio's chat stream, made from the chat stream's chunks.

``chat.start``, ``prompt_processing.*``, ``reasoning.*``, ``message.*``, then ``chat.end``
holding the whole result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from lmserve.api.common.chat import chat_chunks
from lmserve.api.common.errors import APIError
from lmserve.api.common.generation import Generation


class ResultMaker(Protocol):
    """What the events need of their turn (``service.NativeChatTurn``): the result that
    ``chat.end`` holds; so this module never imports the service."""

    async def result(
        self, generation: Generation, reasoning: str | None, text: str
    ) -> dict[str, Any]: ...


async def chat_events(turn: ResultMaker, generation: Generation) -> AsyncIterator[dict[str, Any]]:
    yield {"type": "chat.start", "model_instance_id": generation.prepared.model.identifier}
    yield {"type": "prompt_processing.start"}
    open_kind: str | None = None  # "reasoning" or "message", while one is streaming
    texts = {"reasoning": "", "message": ""}
    processed = False
    try:
        async for chunk in chat_chunks(generation, include_usage=False, progress=True):
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
                    yield {"type": f"{kind}.start"}
                texts[kind] += piece
                yield {"type": f"{kind}.delta", "content": piece}
    except APIError as exc:
        # The headers are gone: the failure goes in-band, and chat.end still comes.
        yield {
            "type": "error",
            "error": {"type": "unknown", "message": exc.message, "code": exc.code},
        }
    if not processed:
        yield {"type": "prompt_processing.end"}
    if open_kind is not None:
        yield {"type": f"{open_kind}.end"}
    result = await turn.result(generation, texts["reasoning"] or None, texts["message"])
    yield {"type": "chat.end", "result": result}
