"""The application factory: every piece of state hangs off ``app.state``, none is global."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from lmserve import __version__
from lmserve.api import lmserve_routes, lmstudio_routes, openai_routes
from lmserve.api.errors import install_error_handlers
from lmserve.logbus import LogBus
from lmserve.models.download_jobs import DownloadJobs
from lmserve.models.loader import LoadOptions
from lmserve.models.manager import ModelManager
from lmserve.paths import downloads_dir


def create_app(
    models: ModelManager,
    *,
    logs: LogBus | None = None,
    startup_models: Sequence[tuple[str, LoadOptions]] = (),
    cors_origins: Sequence[str] = (),
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
            app.state.downloads.cancel_all()  # the parts stay, for a later resume
            models.close()

    app = FastAPI(title="lmserve", version=__version__, lifespan=lifespan)
    app.state.models = models
    app.state.logs = logs or LogBus()
    app.state.downloads = DownloadJobs(downloads_dir(), on_complete=models.rescan)
    install_error_handlers(app)
    if cors_origins:
        # Never with credentials: a page of any origin must not ride on a user's cookies.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
        )
    app.include_router(openai_routes.router)
    app.include_router(lmstudio_routes.router)
    app.include_router(lmserve_routes.router)
    return app
