"""The application factory: every piece of state hangs off ``app.state``, none is global."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from lmserve import __version__
from lmserve.api import lmserve_routes, lmstudio_routes, openai_routes
from lmserve.api.errors import install_error_handlers
from lmserve.logbus import LogBus
from lmserve.models.loader import LoadOptions
from lmserve.models.manager import ModelManager


def create_app(
    models: ModelManager,
    *,
    logs: LogBus | None = None,
    startup_models: Sequence[tuple[str, LoadOptions]] = (),
) -> FastAPI:
    """Build the ASGI app around a model manager; ``startup_models`` load before serving.

    The app owns the manager from here on: it closes it (unloading every model) on shutdown.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            for name, options in startup_models:
                await models.load(name, options)
            yield
        finally:
            models.close()

    app = FastAPI(title="lmserve", version=__version__, lifespan=lifespan)
    app.state.models = models
    app.state.logs = logs or LogBus()
    install_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(lmstudio_routes.router)
    app.include_router(lmserve_routes.router)
    return app
