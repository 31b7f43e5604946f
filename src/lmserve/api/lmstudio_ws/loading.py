"""Loading models from the SDKs: the ``getOrLoad`` and ``loadModel`` channels, ``unloadModel``.

``getOrLoad`` (``lms.llm("key")``, ``client.llm.model(...)``) answers ``alreadyLoaded`` with a
loaded instance, or loads the model just in time, as LM Studio does (``startLoading``,
``loadProgress``, ``loadSuccess``) with the stack's load config and the SDK's TTL (the JIT TTL,
an hour, unless it says otherwise): the models loaded just in time before it are unloaded
(LM Studio's auto-evict; ``unloadingOtherJITModel`` with each one's info, before it goes).
``loadModel`` (``load_new_instance``) always loads a new instance, explicitly: under the
identifier asked for, else the model's key, or ``key:2``, ``key:3``... when that is taken, as
LM Studio names them.  Both go through the model manager, so limits, eviction and crash
recovery are the REST API's own.  The engine does not report how far a load has gone:
progress is 0 when it starts and 1 when it is done.
"""

from __future__ import annotations

from typing import Any

from lmserve.api.lmstudio_ws.errors import SDKError, no_model_matching
from lmserve.api.lmstudio_ws.info import instance_info, loaded_names, model_info, model_key
from lmserve.api.lmstudio_ws.kvconfig import flatten, load_options
from lmserve.api.lmstudio_ws.protocol import GetOrLoadParameter, LoadModelParameter
from lmserve.api.lmstudio_ws.session import VOID, Channel, Context
from lmserve.models.catalog import CatalogEntry
from lmserve.models.errors import ModelNotFound
from lmserve.models.loader import LoadedModel
from lmserve.models.manager import ModelManager


def _entry(models: ModelManager, name: str) -> CatalogEntry:
    entry = models.resolve_entry(name)
    if entry is None:
        why = models.catalog.not_a_model(name)
        raise no_model_matching({"identifier": name}, loaded_names(models), repr(name), why)
    return entry


def _free_identifier(models: ModelManager, key: str) -> str:
    taken = {model.identifier for model in models.loaded()} | set(models.loading)
    if key not in taken:
        return key
    number = 2
    while f"{key}:{number}" in taken:
        number += 1
    return f"{key}:{number}"


async def get_or_load(ctx: Context, param: GetOrLoadParameter, channel: Channel) -> None:
    models = ctx.models
    existing = models.find_loaded(param.identifier)
    if existing is not None:
        await channel.send(
            {"type": "alreadyLoaded", "info": instance_info(models, existing, ctx.domain)}
        )
        return
    entry = _entry(models, param.identifier)
    key = model_key(models, entry)
    options = load_options(
        flatten(param.loadConfigStack), ctx.domain, identifier=None, ttl_ms=param.loadTtlMs
    )
    await channel.send(
        {"type": "startLoading", "identifier": key, "info": model_info(entry, key, ctx.domain)}
    )
    await channel.send({"type": "loadProgress", "progress": 0.0})

    async def evicting(other: LoadedModel) -> None:
        domain = "embedding" if other.entry.model_type == "embeddings" else "llm"
        info = instance_info(models, other, domain)
        await channel.send({"type": "unloadingOtherJITModel", "info": info})

    model = await models.load(entry.relative_path, options, jit=True, on_evict=evicting)
    await channel.send({"type": "loadProgress", "progress": 1.0})
    await channel.send({"type": "loadSuccess", "info": instance_info(models, model, ctx.domain)})


async def load_model(ctx: Context, param: LoadModelParameter, channel: Channel) -> None:
    models = ctx.models
    entry = _entry(models, param.modelKey)
    key = model_key(models, entry)
    await channel.send({"type": "resolved", "info": model_info(entry, key, ctx.domain)})
    if param.identifier is not None and models.find_loaded(param.identifier) is not None:
        # One line, as LM Studio words it (its own tests match "already exists").
        raise SDKError(f"A model instance with the identifier {param.identifier!r} already exists.")
    identifier = param.identifier or _free_identifier(models, key)
    options = load_options(
        flatten(param.loadConfigStack), ctx.domain, identifier=identifier, ttl_ms=param.ttlMs
    )
    await channel.send({"type": "progress", "progress": 0.0})
    model = await models.load(entry.relative_path, options)
    await channel.send({"type": "progress", "progress": 1.0})
    await channel.send({"type": "success", "info": instance_info(models, model, ctx.domain)})


async def unload_model(ctx: Context, param: Any) -> Any:
    try:
        await ctx.models.unload(param.identifier)
    except ModelNotFound:
        # LM Studio's code for it, which the SDKs (and their own scripts) expect.
        query = {"identifier": param.identifier}
        raise no_model_matching(query, loaded_names(ctx.models), repr(param.identifier)) from None
    return VOID
