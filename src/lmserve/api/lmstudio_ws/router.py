"""LM Studio's SDK protocol: ``GET /lmstudio-greeting`` and a WebSocket per namespace.

The SDKs probe the greeting to find a server, then open ``ws://host/<namespace>`` and send an
authentication frame first.  With API keys configured, a connection needs one: in its
upgrade request's headers (``Authorization: Bearer`` or ``x-api-key``, as every route takes
them), or as the authentication frame's ``clientPasskey`` (``new LMStudioClient({clientPasskey})``
in JavaScript), since the SDKs send no headers of their own.  The Host check applies to the
upgrade request as to any other (``api/common/security.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.websockets import WebSocket

from lmserve import __version__
from lmserve.api.common.security import presented_key
from lmserve.api.lmstudio_ws.protocol import AuthPacket
from lmserve.api.lmstudio_ws.service import namespaces
from lmserve.api.lmstudio_ws.session import Session, receive_text
from lmserve.apikeys import APIKeys
from lmserve.plugins import Plugin, Plugins

router = APIRouter()
NAMESPACES = namespaces()
AUTH_TIMEOUT = 10.0  # seconds, LM Studio's own


@router.get("/lmstudio-greeting")
async def greeting() -> dict[str, Any]:
    """What the SDKs look for on a port: an LM Studio server."""
    return {"lmstudio": True, "server": "lmserve", "version": __version__}


async def _authenticate(websocket: WebSocket) -> tuple[str | None, Plugin | None]:
    """None when the client may go on, else why not; and the plugin it is, by its
    credentials (a plugin's own process connects with those its registration gave)."""
    try:
        text = await asyncio.wait_for(receive_text(websocket), AUTH_TIMEOUT)
    except TimeoutError:
        return "No authentication frame came within 10 seconds.", None
    if text is None:
        return "", None  # gone already
    try:
        packet = AuthPacket.model_validate_json(text)
    except ValidationError:
        return (
            "The first frame must be the authentication frame: "
            '{"authVersion": 1, "clientIdentifier": ..., "clientPasskey": ...}.'
        ), None
    plugins: Plugins = websocket.app.state.plugins
    plugin = plugins.authenticate(packet.clientIdentifier, packet.clientPasskey)
    keys: APIKeys = websocket.app.state.api_keys
    by_header = keys.accepts(presented_key(websocket.scope))
    if keys and not by_header and plugin is None and not keys.accepts(packet.clientPasskey):
        return (
            "This server requires an API key: send it as the client passkey "
            "(clientPasskey) or in an 'Authorization: Bearer KEY' header."
        ), None
    return None, plugin


async def serve(websocket: WebSocket, namespace: str) -> None:
    if websocket.app.state.lifecycle.draining:
        await websocket.close(code=1013, reason="the server is shutting down")
        return
    await websocket.accept()
    refused, plugin = await _authenticate(websocket)
    if refused is not None:
        if refused:
            await websocket.send_json({"success": False, "error": refused})
            await websocket.close(code=1008)
        return
    await websocket.send_json({"success": True})
    await Session(websocket, namespace, NAMESPACES[namespace], plugin).run()


def _route(namespace: str) -> Any:
    async def endpoint(websocket: WebSocket) -> None:
        await serve(websocket, namespace)

    endpoint.__name__ = f"lmstudio_ws_{namespace}"
    return endpoint


for _name in NAMESPACES:
    router.add_api_websocket_route(f"/{_name}", _route(_name))
