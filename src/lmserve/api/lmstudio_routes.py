"""LM Studio's native REST API: ``/api/v1`` (models, load, unload, download) and ``/api/v0``.

Response shapes follow LM Studio's documentation; where lmserve knows more (slots, TTL, JIT)
it adds fields rather than changing the documented ones.  The ``lmserve`` CLI talks to the
server through these routes.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from lmserve.api.chat import chat_chunks, chat_completion, prepare_chat
from lmserve.api.completions import completion_chunks, prepare_completion, text_completion
from lmserve.api.errors import NotFoundError
from lmserve.api.generation import Generation, stats_of
from lmserve.api.protocol import MAX_TOKENS_CAP, ChatCompletionRequest, CompletionRequest
from lmserve.api.serving import serve_generation
from lmserve.config import check_gpu_setting, check_repack_setting
from lmserve.models.catalog import CatalogEntry
from lmserve.models.download_jobs import DownloadJobs
from lmserve.models.hub import resolve_plan
from lmserve.models.loader import LoadedModel, LoadOptions
from lmserve.models.manager import ModelManager

router = APIRouter(prefix="/api")

RUNTIME = {
    "name": "llama.cpp-cpu",
    "version": f"llama-cpp-python {importlib.metadata.version('llama_cpp_python')}",
    "supported_formats": ["gguf"],
}


def _models(request: Request) -> ModelManager:
    return request.app.state.models


def _params_string(entry: CatalogEntry) -> str | None:
    label = entry.header.metadata.get("general.size_label")
    if isinstance(label, str) and label:
        return label
    count = entry.header.parameter_count
    if not count:
        return None
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def _instance(model: LoadedModel) -> dict[str, Any]:
    return {
        "id": model.identifier,
        "config": {
            **model.config,
            "ttl": model.ttl,
            "ttl_remaining": model.ttl_remaining(),
            "jit": model.jit,
            "slots": model.engine.n_slots,
            "slots_busy": model.engine.busy_slots,
            "queue_depth": model.engine.queue_depth,
            "engine_pid": model.engine.pid,
        },
    }


def _v1_model(entry: CatalogEntry, key: str, instances: list[LoadedModel]) -> dict[str, Any]:
    header = entry.header
    params = header.parameter_count
    template = header.chat_template or ""
    item: dict[str, Any] = {
        "type": "embedding" if entry.model_type == "embeddings" else "llm",
        "publisher": entry.publisher,
        "key": key,
        "display_name": header.metadata.get("general.name") or key,
        "architecture": header.architecture,
        "quantization": {
            "name": entry.quantization,
            "bits_per_weight": round(entry.size_bytes * 8 / params, 2) if params else None,
        },
        "size_bytes": entry.size_bytes,
        "params_string": _params_string(entry),
        "loaded_instances": [_instance(model) for model in instances],
        "max_context_length": header.context_length,
        "format": "gguf",
        "path": entry.relative_path,
    }
    if item["type"] == "llm":
        item["capabilities"] = {"vision": False, "trained_for_tool_use": "tools" in template}
        item["description"] = None
    return item


@router.get("/v1/models")
async def v1_list_models(request: Request) -> dict[str, Any]:
    """Downloaded models (LLMs and embedding models), each with its loaded instances."""
    models = _models(request)
    catalog = models.rescan()
    loaded = models.loaded()
    items = [
        _v1_model(
            entry,
            catalog.public_id(entry),
            [model for model in loaded if model.entry.path == entry.path],
        )
        for entry in catalog.entries
    ]
    known = {entry.path for entry in catalog.entries}
    items += [
        _v1_model(model.entry, model.identifier, [model])
        for model in loaded
        if model.entry.path not in known  # loaded, then deleted from disk
    ]
    # lmserve's addition: models whose engine crashed lately, loaded again or not.
    return {"models": items, "crashed": models.crashes.report()}


class LoadConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    context_length: int | None = Field(default=None, ge=64, le=1 << 20)
    eval_batch_size: int | None = Field(default=None, ge=1, le=1 << 16)
    flash_attention: bool | None = None
    # lmserve's additions, also accepted at the top level of the request.
    parallel: int | None = Field(default=None, ge=1, le=64)
    ttl: float | None = Field(default=None, gt=0, le=365 * 24 * 3600)
    identifier: str | None = Field(default=None, min_length=1, max_length=200)
    gpu: str | None = None
    repack: str | None = None

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, value: str | None) -> str | None:
        return value if value is None else check_gpu_setting(value)

    @field_validator("repack")
    @classmethod
    def _repack(cls, value: str | None) -> str | None:
        return value if value is None else check_repack_setting(value)


class LoadRequest(LoadConfig):
    model: str = Field(min_length=1)
    config: LoadConfig | None = None

    def options(self) -> LoadOptions:
        merged = {**self.model_dump(exclude={"model", "config"}, exclude_none=True)}
        if self.config is not None:
            merged.update(self.config.model_dump(exclude_none=True))
        return LoadOptions(
            identifier=merged.get("identifier"),
            context_length=merged.get("context_length"),
            parallel=merged.get("parallel"),
            ttl=merged.get("ttl"),
            gpu=merged.get("gpu"),
            repack=merged.get("repack"),
        )


@router.post("/v1/models/load")
async def v1_load(body: LoadRequest, request: Request) -> dict[str, Any]:
    """Load a downloaded model; an instance with the same identifier is returned as it is."""
    started = time.perf_counter()
    model = await _models(request).load(body.model, body.options())
    return {
        "model_instance_id": model.identifier,
        "config": _instance(model)["config"],
        "load_time_seconds": round(time.perf_counter() - started, 3),
    }


class UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    instance_id: str = Field(min_length=1)


@router.post("/v1/models/unload")
async def v1_unload(body: UnloadRequest, request: Request) -> dict[str, Any]:
    await _models(request).unload(body.instance_id)
    return {"instance_id": body.instance_id}


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=500)
    quantization: str | None = Field(default=None, max_length=40)


@router.post("/v1/models/download")
async def v1_download(body: DownloadRequest, request: Request) -> dict[str, Any]:
    """Start downloading a Hugging Face model (``publisher/repo[@quant]`` or a hub URL)."""
    models = _models(request)
    plan = await asyncio.to_thread(
        resolve_plan, body.model, models_root=models.models_root, quantization=body.quantization
    )
    if await asyncio.to_thread(plan.already_present):
        return {"status": "already_downloaded", "files": [str(p) for p in plan.targets]}
    return _downloads(request).start(plan).describe()


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


def _downloads(request: Request) -> DownloadJobs:
    return request.app.state.downloads


# -- v0 ------------------------------------------------------------------------------------------
def _v0_model(entry: CatalogEntry, key: str, loaded: LoadedModel | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": key,
        "object": "model",
        "type": entry.model_type,
        "publisher": entry.publisher,
        "arch": entry.header.architecture,
        "compatibility_type": "gguf",
        "quantization": entry.quantization,
        "state": "loaded" if loaded is not None else "not-loaded",
        "max_context_length": entry.header.context_length,
    }
    if loaded is not None:
        item["loaded_context_length"] = loaded.n_ctx
    return item


def _v0_models(models: ModelManager) -> list[dict[str, Any]]:
    catalog = models.rescan()
    loaded = models.loaded()
    items = []
    for model in loaded:
        items.append(_v0_model(model.entry, model.identifier, model))
    loaded_paths = {model.entry.path for model in loaded}
    for entry in catalog.entries:
        if entry.path not in loaded_paths:
            items.append(_v0_model(entry, catalog.public_id(entry), None))
    return items


@router.get("/v0/models")
async def v0_list_models(request: Request) -> dict[str, Any]:
    """All loaded and downloaded models."""
    return {"object": "list", "data": _v0_models(_models(request))}


@router.get("/v0/models/{model:path}")
async def v0_get_model(model: str, request: Request) -> dict[str, Any]:
    models = _models(request)
    loaded = models.find_loaded(model)
    if loaded is not None:
        return _v0_model(loaded.entry, loaded.identifier, loaded)
    entry = models.resolve_entry(model)
    if entry is None:
        raise NotFoundError(f"No model named '{model}'.", param="model", code="model_not_found")
    return _v0_model(entry, models.catalog.public_id(entry), None)


def _v0_max_tokens(value: int | None) -> int | None:
    # LM Studio's own examples send -1 for "no limit".
    if value is not None and value < 0:
        if value != -1:
            raise ValueError("max_tokens must be -1 (no limit) or at least 1")
        return None
    return value


class V0ChatRequest(ChatCompletionRequest):
    max_tokens: int | None = Field(default=None, ge=-1, le=MAX_TOKENS_CAP)

    @field_validator("max_tokens")
    @classmethod
    def _no_limit(cls, value: int | None) -> int | None:
        return _v0_max_tokens(value)


class V0CompletionRequest(CompletionRequest):
    max_tokens: int | None = Field(default=16, ge=-1, le=MAX_TOKENS_CAP)

    @field_validator("max_tokens")
    @classmethod
    def _no_limit(cls, value: int | None) -> int | None:
        return _v0_max_tokens(value)


def _extras(generation: Generation) -> dict[str, Any]:
    model = generation.prepared.model
    first = generation.finished[0]
    return {
        "stats": stats_of(first) if first is not None else {},
        "model_info": {
            "arch": model.entry.header.architecture,
            "quant": model.entry.quantization,
            "format": "gguf",
            "context_length": model.n_ctx,
        },
        "runtime": RUNTIME,
    }


async def _with_extras_last(
    generation: Generation, chunks: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    """v0 streams end with a chunk carrying ``stats``, ``model_info`` and ``runtime``."""
    async for chunk in chunks:
        yield chunk
    yield {
        "id": generation.prepared.request_id,
        "object": "stats",
        "choices": [],
        **_extras(generation),
    }


@router.post("/v0/chat/completions", response_model=None)
async def v0_chat(body: V0ChatRequest, request: Request) -> Response | Any:
    """Chat completions with LM Studio's ``stats``, ``model_info`` and ``runtime``."""

    async def respond(generation: Generation) -> dict[str, Any]:
        completion = await chat_completion(generation)
        return {**completion.model_dump(), **_extras(generation)}

    return await serve_generation(
        request,
        body,
        prepare_chat,
        respond,
        lambda g: _with_extras_last(g, chat_chunks(g, body.include_usage)),
    )


@router.post("/v0/completions", response_model=None)
async def v0_completions(body: V0CompletionRequest, request: Request) -> Response | Any:
    """Text completions with LM Studio's ``stats``, ``model_info`` and ``runtime``."""

    async def respond(generation: Generation) -> dict[str, Any]:
        completion = await text_completion(generation, body)
        return {**completion.model_dump(), **_extras(generation)}

    return await serve_generation(
        request,
        body,
        prepare_completion,
        respond,
        lambda g: _with_extras_last(g, completion_chunks(g, body)),
    )
