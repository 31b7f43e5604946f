"""Starting the server: choose the first model, build the app, run uvicorn; draining at the end.

The first SIGTERM or SIGINT (Ctrl-C) starts a drain: new requests get 503 ``shutting_down``
and ``/health`` says 503, while the requests in flight run to their end, for at most
``--drain-timeout`` seconds; then whatever still runs is stopped and the process exits 0.
A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from types import FrameType

import uvicorn
from starlette.datastructures import State

from lmserve.api.app import create_app
from lmserve.api.common.security import is_loopback_name
from lmserve.config import SDK_DISCOVERY_PORTS, Settings
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
            why = catalog.not_a_model(settings.model)
            raise ServerStartError(
                f"{why} (have: {known})"
                if why
                else f"no downloaded model matches '{settings.model}' (have: {known})"
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


class DrainingServer(uvicorn.Server):
    """uvicorn, draining before it stops (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, state: State, drain_timeout: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self.drain_requested = False
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: only set flags; on_tick acts on them.  Unlike uvicorn's
        # own handler, the signal is not raised again after shutdown: a drained server
        # exits 0.
        if self.drain_requested:
            self.should_exit = True  # the second signal: stop now
        self.drain_requested = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_requested and not self.should_exit:
            self._drain()
        return await super().on_tick(counter)

    def _drain(self) -> None:
        lifecycle = self.state.lifecycle
        now = time.monotonic()
        if self.drain_deadline is None:
            lifecycle.draining = True
            self.state.logs.close()  # log streams never end by themselves
            self.drain_deadline = now + self.drain_timeout
            if not lifecycle.idle:
                logger.info(
                    "shutting down: waiting up to %g s for %d request(s) in flight",
                    self.drain_timeout,
                    lifecycle.in_flight,
                )
        if lifecycle.idle:
            self.should_exit = True
        elif now >= self.drain_deadline:
            logger.warning(
                "drain timeout: stopping the %d request(s) still in flight", lifecycle.in_flight
            )
            # The engines end every request they hold with "the server is shutting down",
            # so clients get an answer rather than a cut connection.
            self.state.models.close()
            self.should_exit = True


def sdk_socket(settings: Settings) -> socket.socket | None:
    """A socket on the loopback port LM Studio's SDKs look for (``--sdk-port``), or None.

    ``auto`` takes the first free one of the SDKs' ports; a port taken by something else is
    left to it, and the server goes on without.  None either when the main address already
    answers on loopback at one of those ports.
    """
    if settings.sdk_port is None:
        return None
    wanted = SDK_DISCOVERY_PORTS if settings.sdk_port == "auto" else (int(settings.sdk_port),)
    main_on_loopback = is_loopback_name(settings.host) or settings.host in {"0.0.0.0", "::", ""}
    if main_on_loopback and settings.port in wanted:
        return None
    for port in wanted:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        logger.info(
            "LM Studio's SDKs find this server on 127.0.0.1:%d (ws://127.0.0.1:%d; "
            "lms.llm() with no host)",
            port,
            port,
        )
        return sock
    logger.warning(
        "LM Studio's SDK port%s %s %s taken: SDK clients must be given this server's "
        "address (lms.Client('%s:%d'))",
        "s" if len(wanted) > 1 else "",
        ", ".join(map(str, wanted)),
        "are all" if len(wanted) > 1 else "is",
        settings.host,
        settings.port,
    )
    return None


def run_server(settings: Settings, log_level: str = "info") -> None:
    manager = ModelManager(models_dir(), settings)
    startup = []
    if settings.load_at_start:
        entry = choose_model(manager, settings)
        options = LoadOptions(draft_model=settings.draft_model, mmproj=settings.mmproj)
        startup.append((entry.relative_path, options))
    app = create_app(manager, startup_models=startup, settings=settings)
    if not is_loopback_name(settings.host) and not settings.api_keys:
        logger.warning(
            "listening on %s without an API key: anyone who can reach this address can use "
            "the server (see --api-key)",
            settings.host,
        )
    logger.info("lmserve will listen on http://%s:%d/v1", settings.host, settings.port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        # After the drain, only idle connections are left: closing them is quick.
        timeout_graceful_shutdown=2,
        access_log=log_level == "debug",
        # A WebSocket frame (LM Studio's SDKs) is capped like a request body.
        ws_max_size=settings.max_body_size,
    )
    # Both sockets serve the same app, behind the same guards (Host check, API keys).
    sockets = [config.bind_socket()]
    if (sdk := sdk_socket(settings)) is not None:
        sockets.append(sdk)
    server = DrainingServer(config, app.state, settings.drain_timeout)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=sockets)
