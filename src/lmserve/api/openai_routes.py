"""OpenAI-compatible routes under ``/v1``.  HTTP only: the work is in the services."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmserve.api.chat import chat_chunks, chat_completion, prepare_chat
from lmserve.api.completions import completion_chunks, prepare_completion, text_completion
from lmserve.api.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    TextCompletion,
)
from lmserve.api.serving import serve_generation
from lmserve.models.manager import ModelManager

router = APIRouter(prefix="/v1")


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    """Loaded models by identifier; with JIT loading on, every downloaded model too."""
    models: ModelManager = request.app.state.models
    cards = [
        ModelCard(id=model.identifier, created=int(model.loaded_at), owned_by=model.entry.publisher)
        for model in models.loaded()
    ]
    if models.jit:
        loaded_paths = {model.entry.path for model in models.loaded()}
        models.rescan()
        cards += [
            ModelCard(
                id=models.catalog.public_id(entry),
                created=int(entry.path.stat().st_mtime)
                if entry.path.exists()
                else int(time.time()),
                owned_by=entry.publisher,
            )
            for entry in models.catalog.entries
            if entry.path not in loaded_paths
        ]
    return ModelList(data=cards)


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response | Any:
    return await serve_generation(
        request,
        body,
        prepare_chat,
        chat_completion,
        lambda generation: chat_chunks(generation, body.include_usage),
    )


@router.post("/completions", response_model=TextCompletion)
async def create_completion(body: CompletionRequest, request: Request) -> Response | Any:
    return await serve_generation(
        request,
        body,
        prepare_completion,
        lambda generation: text_completion(generation, body),
        lambda generation: completion_chunks(generation, body),
    )
