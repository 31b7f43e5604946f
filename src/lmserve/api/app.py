"""The application factory: every piece of state hangs off ``app.state``, none is global."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from lmserve import __version__
from lmserve.api.anthropic.errors import AnthropicErrorShape
from lmserve.api.anthropic.router import router as anthropic_router
from lmserve.api.common.errors import install_error_handlers
from lmserve.api.common.images import ImageReader
from lmserve.api.common.lifecycle import DrainGuard, Lifecycle
from lmserve.api.common.limits import BodySizeLimit
from lmserve.api.common.metrics import Metrics, MetricsMiddleware
from lmserve.api.common.security import APIKeyGuard, APIKeys, HostGuard, is_loopback_name
from lmserve.api.lmserve.router import router as lmserve_router
from lmserve.api.lmstudio.router import router as lmstudio_router
from lmserve.api.lmstudio.service import ChatThreads
from lmserve.api.lmstudio_ws.files import FileStore
from lmserve.api.lmstudio_ws.router import router as lmstudio_ws_router
from lmserve.api.openai.router import router as openai_router
from lmserve.api.rerank.router import router as rerank_router
from lmserve.api.responses.router import router as responses_router
from lmserve.api.responses.service import ResponseStore
from lmserve.api.webui.assets import Assets
from lmserve.api.webui.router import conversations_router, page_router
from lmserve.api.webui.service import Conversations
from lmserve.config import Settings
from lmserve.logbus import LogBus
from lmserve.mcp.connection import Timeouts
from lmserve.mcp.servers import McpServers
from lmserve.models.download_jobs import DownloadJobs
from lmserve.models.loader import LoadOptions
from lmserve.models.manager import ModelManager
from lmserve.paths import conversations_file, downloads_dir, mcp_config_file
from lmserve.plugins import Plugins


def create_app(
    models: ModelManager,
    *,
    logs: LogBus | None = None,
    startup_models: Sequence[tuple[str, LoadOptions]] = (),
    settings: Settings | None = None,
) -> FastAPI:
    """Build the ASGI app around a model manager; ``startup_models`` load before serving.

    The app owns the manager from here on: it closes it (unloading every model) on shutdown.
    ``settings`` gives the HTTP policy: CORS, API keys, the Host check, the body size cap.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            for name, options in startup_models:
                await models.load(name, options)
            yield
        finally:
            app.state.logs.close()
            app.state.downloads.cancel_all()  # the parts stay, for a later resume
            await app.state.conversations.aclose()
            await app.state.mcp.close()  # mcp.json's stdio servers stop with lmserve
            app.state.plugins.close()
            models.close()

    app = FastAPI(title="lmserve", version=__version__, lifespan=lifespan)
    app.state.models = models
    app.state.logs = logs or LogBus()
    app.state.downloads = DownloadJobs(downloads_dir(), on_complete=models.rescan)
    app.state.lifecycle = Lifecycle()
    app.state.responses = ResponseStore()
    app.state.chat_threads = ChatThreads()
    app.state.sdk_files = FileStore()  # the images LM Studio's SDKs upload
    app.state.metrics = Metrics()
    app.state.images = ImageReader(settings.images)
    app.state.mcp_settings = settings.mcp
    app.state.mcp = McpServers(
        mcp_config_file(), Timeouts(settings.mcp.connect_timeout, settings.mcp.call_timeout)
    )
    app.state.plugins = Plugins(settings.plugin_timeout)  # LM Studio plugins, registered
    # The page's conversations: the file is opened (and created) on first use only.
    app.state.conversations = Conversations(conversations_file())
    if settings.webui:
        app.state.webui_assets = Assets.from_package()
    # For routes that check keys themselves (the SDKs' WebSockets); empty: any key will do.
    app.state.api_keys = APIKeys(settings.api_keys)
    app.state.logs.add_listener(app.state.metrics.observe_record)
    install_error_handlers(app)
    _install_guards(app, settings)
    # Outside every guard, so their refusals on Anthropic's routes come in Anthropic's shape.
    app.add_middleware(AnthropicErrorShape)
    if settings.webui:
        app.include_router(page_router)  # before lmserve_router: it answers browsers at /
    for router in (
        conversations_router,
        openai_router,
        rerank_router,
        responses_router,
        anthropic_router,
        lmstudio_router,
        lmstudio_ws_router,
        lmserve_router,
    ):
        app.include_router(router)
    return app


def _install_guards(app: FastAPI, settings: Settings) -> None:
    """The middleware, innermost first (each ``add_middleware`` wraps the ones before).

    From the outside in: metrics see every answer; the Host check refuses rebinding pages
    before anything else; CORS answers preflights (no key needed) and labels the refusals
    below it so pages can read them; then draining, API keys, and the body cap.
    """
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_size)
    if settings.api_keys:
        app.add_middleware(APIKeyGuard, keys=APIKeys(settings.api_keys), page=settings.webui)
    app.add_middleware(DrainGuard, lifecycle=app.state.lifecycle)
    if settings.cors_origins:
        # Never with credentials: a page of any origin must not ride on a user's cookies.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
        )
    if is_loopback_name(settings.host):
        app.add_middleware(HostGuard, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, router=app.router)
