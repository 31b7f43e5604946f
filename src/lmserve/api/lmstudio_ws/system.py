"""The ``system``, ``diagnostics`` and ``files`` namespaces.

``system`` lists downloaded models and answers the SDKs' housekeeping calls (version,
notifications, experiment flags; starting or stopping the HTTP server is refused).
``diagnostics`` streams the prompts models receive: the log stream's
``llm.prediction.input`` records, as LM Studio's diagnostics log events.  ``files`` takes
the images a later prediction's history names (:mod:`lmserve.api.lmstudio_ws.files` keeps
them).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any

from lmserve import __version__
from lmserve.api.lmstudio_ws.errors import SDKError, unsupported
from lmserve.api.lmstudio_ws.info import model_info, model_key
from lmserve.api.lmstudio_ws.protocol import UploadFileParameter
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


async def upload_file_base64(ctx: Context, param: UploadFileParameter) -> Any:
    """Keep a file (an image, for a later history to name) and answer its handle's fields."""
    try:
        data = base64.b64decode(param.contentBase64, validate=True)
    except (binascii.Error, ValueError):
        raise SDKError("The file's contentBase64 is not base64.") from None
    # An empty file is kept too, as LM Studio keeps it (a stream read twice sends nothing).
    stored = ctx.files.add(param.name, data)
    return {"identifier": stored.identifier, "fileType": stored.file_type, "sizeBytes": len(data)}


async def no_local_path(ctx: Context, _: Any) -> Any:
    raise unsupported("A local path for a file (lmserve keeps the files it is sent in memory)")


async def alive(ctx: Context, _: Any, channel: Channel) -> None:
    """Open while the client is connected (it closes with the connection)."""
    await channel.cancelled.wait()


async def stream_logs(ctx: Context, _: Any, channel: Channel) -> None:
    """The prompts models receive, as LM Studio's diagnostics log events, until ``stop``."""

    records = ctx.logs.subscribe()  # now, so what is predicted from here on is sent

    async def forward() -> None:
        async for record in records:
            if record["type"] != "llm.prediction.input":
                continue
            model = ctx.models.find_loaded(record["model"])
            data = {
                "type": "llm.prediction.input",
                "modelPath": model.entry.relative_path if model else record["model"],
                "modelIdentifier": record["model"],
                "input": record["prompt"],
            }
            timestamp = int(record["timestamp"] * 1000)
            await channel.send({"type": "log", "log": {"timestamp": timestamp, "data": data}})

    forwarding = asyncio.ensure_future(forward())
    stop = asyncio.ensure_future(channel.cancelled.wait())
    try:
        await asyncio.wait({forwarding, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        records.close()
        for task in (forwarding, stop):
            task.cancel()
        await asyncio.wait({forwarding, stop})
    if not forwarding.cancelled():
        forwarding.result()  # raises what ended it (the client went away mid-send)


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
    files_rpcs = {
        "uploadFileBase64": Rpc(UploadFileParameter, upload_file_base64),
        "getLocalFileAbsolutePath": Rpc(None, no_local_path),
    }
    return {
        "system": Namespace(system_rpcs, {"alive": ChannelEndpoint(None, alive, long_lived=True)}),
        "diagnostics": Namespace(
            {}, {"streamLogs": ChannelEndpoint(None, stream_logs, long_lived=True)}
        ),
        "files": Namespace(files_rpcs, {}),
    }
