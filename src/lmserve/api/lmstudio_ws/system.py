"""The ``system``, ``diagnostics`` and ``files`` namespaces.

``system`` lists downloaded models and answers the SDKs' housekeeping calls (version,
notifications, experiment flags; starting or stopping the HTTP server is refused).
``diagnostics`` streams the prompts models receive: the log stream's
``llm.prediction.input`` records, as LM Studio's diagnostics log events.  ``files`` takes
images for vision models, which lmserve does not serve: its calls get an error saying so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from lmserve import __version__
from lmserve.api.lmstudio_ws.errors import unsupported
from lmserve.api.lmstudio_ws.info import model_info, model_key
from lmserve.api.lmstudio_ws.session import VOID, Channel, ChannelEndpoint, Context, Namespace, Rpc

logger = logging.getLogger("lmserve.api")


async def list_downloaded(ctx: Context, _: Any) -> Any:
    catalog = ctx.models.rescan()
    return [model_info(entry, model_key(ctx.models, entry)) for entry in catalog.entries]


async def version(ctx: Context, _: Any) -> Any:
    return {"version": __version__, "build": 0}


async def notify(ctx: Context, param: Any) -> Any:
    title = param.get("title") if isinstance(param, dict) else None
    logger.info("an SDK client notifies: %s", str(title)[:200])
    return VOID


async def nothing(ctx: Context, _: Any) -> Any:
    return VOID


async def no_flags(ctx: Context, _: Any) -> Any:
    return []


async def refuse_http_server(ctx: Context, _: Any) -> Any:
    raise unsupported("Starting or stopping the HTTP server from an SDK")


async def refuse_files(ctx: Context, _: Any) -> Any:
    raise unsupported("Files and images (the models lmserve serves read text only)")


async def alive(ctx: Context, _: Any, channel: Channel) -> None:
    """Open while the client is connected (it closes with the connection)."""
    await channel.cancelled.wait()


async def stream_logs(ctx: Context, _: Any, channel: Channel) -> None:
    """The prompts models receive, as LM Studio's diagnostics log events, until ``stop``."""
    records = ctx.logs.subscribe()
    stop = asyncio.ensure_future(channel.cancelled.wait())
    try:
        while True:
            following = asyncio.ensure_future(anext(records))
            done, _ = await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                following.cancel()
                return
            try:
                record = following.result()
            except StopAsyncIteration:
                return
            if record["type"] != "llm.prediction.input":
                continue
            model = ctx.models.find_loaded(record["model"])
            data = {
                "type": "llm.prediction.input",
                "modelPath": model.entry.relative_path if model else record["model"],
                "modelIdentifier": record["model"],
                "input": record["prompt"],
            }
            await channel.send(
                {"type": "log", "log": {"timestamp": int(time.time() * 1000), "data": data}}
            )
    finally:
        stop.cancel()
        await records.aclose()


def system_namespaces() -> dict[str, Namespace]:
    system_rpcs = {
        "listDownloadedModels": Rpc(None, list_downloaded),
        "version": Rpc(None, version),
        "notify": Rpc(None, notify),
        "getExperimentFlags": Rpc(None, no_flags),
        "setExperimentFlag": Rpc(None, nothing),
        "startHttpServer": Rpc(None, refuse_http_server),
        "stopHttpServer": Rpc(None, refuse_http_server),
    }
    files = ("uploadFileBase64", "getLocalFileAbsolutePath")
    return {
        "system": Namespace(system_rpcs, {"alive": ChannelEndpoint(None, alive, long_lived=True)}),
        "diagnostics": Namespace(
            {}, {"streamLogs": ChannelEndpoint(None, stream_logs, long_lived=True)}
        ),
        "files": Namespace({name: Rpc(None, refuse_files) for name in files}, {}),
    }
