"""The application factory: every piece of state hangs off ``app.state``, none is global."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from lmserve import __version__
from lmserve.api import lmserve_routes, openai_routes
from lmserve.api.chat import ChatService
from lmserve.api.errors import install_error_handlers
from lmserve.logbus import LogBus
from lmserve.models.manager import ModelManager


def create_app(models: ModelManager, logs: LogBus | None = None) -> FastAPI:
    """Build the ASGI app around an already-populated model manager.

    The app owns the manager from here on: it closes it (unloading every model) on shutdown.
    """
    logs = logs or LogBus()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            models.close()

    app = FastAPI(title="lmserve", version=__version__, lifespan=lifespan)
    app.state.models = models
    app.state.logs = logs
    app.state.chat = ChatService(models, logs)
    install_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(lmserve_routes.router)
    return app
