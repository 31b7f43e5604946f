"""LM Studio's native REST API routes: ``/api/v1`` (models, load, unload, download, chat) and
``/api/v0``.  The ``lmserve`` CLI talks to the server through these routes."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmserve.api.common.chat import chat_completion_turn
from lmserve.api.common.completions import text_completion_turn
from lmserve.api.common.embeddings import create_embeddings
from lmserve.api.common.errors import NotFoundError
from lmserve.api.common.protocol import EmbeddingRequest
from lmserve.api.common.replicas import replica_lines
from lmserve.api.common.serving import serve_generation
from lmserve.api.common.tool_loop import serve_with_tools
from lmserve.api.lmstudio.plugins import preprocess
from lmserve.api.lmstudio.protocol import (
    DownloadRequest,
    LoadRequest,
    NativeChatRequest,
    UnloadRequest,
    V0ChatRequest,
    V0CompletionRequest,
)
from lmserve.api.lmstudio.service import (
    ChatThreads,
    NativeChatTurn,
    WithStats,
    instance,
    integration_uses,
    start_download,
    v0_model,
    v0_models,
    v1_models,
)
from lmserve.models.download_jobs import DownloadJobs
from lmserve.models.manager import ModelManager
from lmserve.plugins import PluginUse

router = APIRouter(prefix="/api")


def _models(request: Request) -> ModelManager:
    return request.app.state.models  # type: ignore[no-any-return]


def _downloads(request: Request) -> DownloadJobs:
    return request.app.state.downloads  # type: ignore[no-any-return]


def _chat_threads(request: Request) -> ChatThreads:
    return request.app.state.chat_threads  # type: ignore[no-any-return]


# -- v1 -----------------------------------------------------------------------------------------


@router.get("/v1/models")
async def v1_list_models(request: Request) -> dict[str, Any]:
    """Downloaded models (LLMs and embedding models), each with its loaded instances."""
    models = _models(request)
    return v1_models(models, await replica_lines(models))


@router.post("/v1/models/load")
async def v1_load(body: LoadRequest, request: Request) -> dict[str, Any]:
    """Load a downloaded model; an instance with the same identifier is returned as it is."""
    started = time.perf_counter()
    model = await _models(request).load(body.model, body.options())
    return {
        "model_instance_id": model.identifier,
        "config": instance(model)["config"],
        "load_time_seconds": round(time.perf_counter() - started, 3),
    }


@router.post("/v1/models/unload")
async def v1_unload(body: UnloadRequest, request: Request) -> dict[str, Any]:
    await _models(request).unload(body.instance_id)
    return {"instance_id": body.instance_id}


@router.post("/v1/models/download")
async def v1_download(body: DownloadRequest, request: Request) -> dict[str, Any]:
    """Start downloading a Hugging Face model (``publisher/repo[@quant]`` or a hub URL)."""
    return await start_download(body, _models(request), _downloads(request))


@router.get("/v1/models/download/status")
async def v1_download_status(request: Request) -> dict[str, Any]:
    """Every download job of this server, grouped by status."""
    return _downloads(request).by_status()


@router.get("/v1/models/download/status/{job_id}")
async def v1_download_job(job_id: str, request: Request) -> dict[str, Any]:
    job = _downloads(request).get(job_id)
    if job is None:
        raise NotFoundError(f"No download job '{job_id}'.", param="job_id")
    return job.describe()


@router.post("/v1/chat", response_model=None)
async def native_chat(body: NativeChatRequest, request: Request) -> Response | Any:
    """LM Studio's stateful chat: one input, the conversation kept by id."""
    turn = NativeChatTurn(body, _chat_threads(request))
    state = request.app.state
    uses = integration_uses(body, state.mcp_settings, state.mcp, state.plugins)
    plugins = [state.plugins.get(use.plugin_id) for use in uses if isinstance(use, PluginUse)]
    if plugins:
        turn.content = await preprocess(
            state.plugins, plugins, turn.earlier(), turn.content, body.model
        )
    if not uses:
        return await serve_generation(request, turn.chat_request(), turn)
    return await serve_with_tools(
        request,
        turn,
        uses,
        turn.chat_request,
        param="integrations",
        max_rounds=body.max_tool_rounds,
        progress=True,
    )


# -- v0 -----------------------------------------------------------------------------------------


@router.get("/v0/models")
async def v0_list_models(request: Request) -> dict[str, Any]:
    """All loaded and downloaded models."""
    models = _models(request)
    return {"object": "list", "data": v0_models(models, await replica_lines(models))}


@router.get("/v0/models/{model:path}")
async def v0_get_model(model: str, request: Request) -> dict[str, Any]:
    models = _models(request)
    return v0_model(models, model, await replica_lines(models))


@router.post("/v0/chat/completions", response_model=None)
async def v0_chat(body: V0ChatRequest, request: Request) -> Response | Any:
    """Chat completions with LM Studio's ``stats``, ``model_info`` and ``runtime``."""
    return await serve_generation(request, body, WithStats(chat_completion_turn(body)))


@router.post("/v0/completions", response_model=None)
async def v0_completions(body: V0CompletionRequest, request: Request) -> Response | Any:
    """Text completions with LM Studio's ``stats``, ``model_info`` and ``runtime``."""
    return await serve_generation(request, body, WithStats(text_completion_turn(body)))


@router.post("/v0/embeddings")
async def v0_embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    """LM Studio's v0 embeddings route: the same as ``/v1/embeddings``."""
    return await create_embeddings(body, _models(request))
