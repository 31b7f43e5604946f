"""OpenAI-compatible routes under ``/v1``: models, chat and text completions, embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmserve.api.common.chat import chat_completion_turn
from lmserve.api.common.completions import text_completion_turn
from lmserve.api.common.embeddings import create_embeddings
from lmserve.api.common.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    TextCompletion,
)
from lmserve.api.common.replicas import replica_lines
from lmserve.api.common.serving import serve_generation
from lmserve.api.openai.protocol import ModelList
from lmserve.api.openai.service import model_list

router = APIRouter(prefix="/v1")


@router.get("/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(request: Request) -> ModelList:
    """Loaded models by identifier; with JIT loading on, every downloaded model too."""
    models = request.app.state.models
    return model_list(models, await replica_lines(models))


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response | Any:
    return await serve_generation(request, body, chat_completion_turn(body))


@router.post("/completions", response_model=TextCompletion)
async def create_completion(body: CompletionRequest, request: Request) -> Response | Any:
    return await serve_generation(request, body, text_completion_turn(body))


@router.post("/embeddings")
async def v1_embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    """Embeddings of a string, a list of strings, or token arrays (pooled, normalised)."""
    return await create_embeddings(body, request.app.state.models)
