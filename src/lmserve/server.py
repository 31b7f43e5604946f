"""Starting the server: choose and load the model, build the app, run uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from lmserve.api.app import create_app
from lmserve.config import Settings
from lmserve.engine.llama import ModelLoadError
from lmserve.models.catalog import CatalogEntry
from lmserve.models.default import DEFAULT_MODEL, ModelFetchError, ensure_default_model
from lmserve.models.manager import LoadOptions, ModelManager, ModelNotFound
from lmserve.paths import models_dir

logger = logging.getLogger("lmserve")


class ServerStartError(RuntimeError):
    """The server cannot start; the message says why, for the user."""


def choose_model(manager: ModelManager, settings: Settings) -> CatalogEntry:
    catalog = manager.catalog
    if settings.model:
        entry = catalog.resolve(settings.model)
        if entry is None:
            known = ", ".join(catalog.public_id(e) for e in catalog.entries) or "none"
            raise ServerStartError(
                f"no downloaded model matches '{settings.model}' (have: {known})"
            )
        return entry
    default = next((e for e in catalog.entries if e.path.name == DEFAULT_MODEL.file_name), None)
    if default is not None:
        return default
    llms = [entry for entry in catalog.entries if entry.model_type == "llm"]
    if llms:
        return llms[0]
    if not settings.fetch_default_model:
        raise ServerStartError("no model is downloaded")
    try:
        ensure_default_model(manager.models_root)
    except ModelFetchError as exc:
        raise ServerStartError(str(exc)) from exc
    entry = manager.rescan().resolve(DEFAULT_MODEL.publisher + "/" + DEFAULT_MODEL.repo)
    if entry is None:
        raise ServerStartError("the default model was fetched but cannot be read")
    return entry


def build_manager(settings: Settings) -> ModelManager:
    """Scan the models folder and load the model the server starts with."""
    manager = ModelManager(models_dir())
    entry = choose_model(manager, settings)
    options = LoadOptions(
        context_length=settings.context_length,
        parallel=settings.parallel,
        max_queue=settings.max_queue,
        threads=settings.threads,
        batch_size=settings.batch_size,
    )
    try:
        manager.load(entry.relative_path, options)
    except (ModelLoadError, ModelNotFound) as exc:
        raise ServerStartError(f"could not load {entry.relative_path}: {exc}") from exc
    return manager


def run_server(settings: Settings, log_level: str = "info") -> None:
    manager = build_manager(settings)
    app = create_app(manager)
    for model in manager.loaded():
        logger.info(
            "serving %s at http://%s:%d/v1 (%d slots, %d tokens each)",
            model.identifier,
            settings.host,
            settings.port,
            settings.parallel,
            model.n_ctx,
        )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        access_log=log_level == "debug",
    )
