"""Starting the server: choose the first model, build the app, run uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from lmserve.api.app import create_app
from lmserve.config import Settings
from lmserve.models.catalog import CatalogEntry
from lmserve.models.default import DEFAULT_MODEL, ModelFetchError, ensure_default_model
from lmserve.models.loader import LoadOptions
from lmserve.models.manager import ModelManager
from lmserve.paths import models_dir

logger = logging.getLogger("lmserve")


class ServerStartError(RuntimeError):
    """The server cannot start; the message says why, for the user."""


def choose_model(manager: ModelManager, settings: Settings) -> CatalogEntry:
    """The model to load at start: ``--model``, else the default model (fetched if need be)."""
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
    entry = manager.rescan().resolve(f"{DEFAULT_MODEL.publisher}/{DEFAULT_MODEL.repo}")
    if entry is None:
        raise ServerStartError("the default model was fetched but cannot be read")
    return entry


def run_server(settings: Settings, log_level: str = "info") -> None:
    manager = ModelManager(models_dir(), settings)
    startup = []
    if settings.load_at_start:
        entry = choose_model(manager, settings)
        startup.append((entry.relative_path, LoadOptions()))
    app = create_app(manager, startup_models=startup, cors_origins=settings.cors_origins)
    logger.info("lmserve will listen on http://%s:%d/v1", settings.host, settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        access_log=log_level == "debug",
    )
