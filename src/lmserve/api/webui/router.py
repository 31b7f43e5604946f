"""The chat page's routes (``/``, ``/webui/...``) and the conversations API
(``/lmserve/conversations``).

``page_router`` is included (before ``lmserve/``'s root) only when the page is on;
``conversations_router`` always: it is an API like the others, with the key and Host checks.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from lmserve.api.common.root import root_answer
from lmserve.api.common.security import wants_html
from lmserve.api.webui.assets import Assets
from lmserve.api.webui.protocol import (
    MAX_ID,
    ConversationUpdate,
    ExportFile,
    NewConversation,
    NewMessage,
)
from lmserve.api.webui.service import Conversations, export_filename

Id = Annotated[str, Path(min_length=1, max_length=MAX_ID, pattern=r"^[A-Za-z0-9_.:-]+$")]
ImageId = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]
# An image's bytes are the user's, not ours: never a document (nothing in it may run, even
# opened on its own), never guessed at.
IMAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "private, no-cache",
}
page_router = APIRouter()
conversations_router = APIRouter(prefix="/lmserve/conversations", tags=["conversations"])


def _assets(request: Request) -> Assets:
    return request.app.state.webui_assets  # type: ignore[no-any-return]


def _conversations(request: Request) -> Conversations:
    return request.app.state.conversations  # type: ignore[no-any-return]


# -- the page -----------------------------------------------------------------------------------


@page_router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False, response_model=None)
async def page(request: Request) -> Response | dict[str, Any]:
    """The chat page for a browser; the JSON answer for clients that probe the root."""
    if wants_html(request.scope):
        return _assets(request).response("index.html", request)
    return root_answer()


@page_router.api_route("/webui/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def page_file(name: str, request: Request) -> Response:
    return _assets(request).response(name, request)


# -- conversations ------------------------------------------------------------------------------


@conversations_router.get("")
async def list_conversations(request: Request) -> dict[str, Any]:
    """Every conversation, most recently changed first, without its messages."""
    return {"object": "list", "data": await _conversations(request).summaries()}


@conversations_router.post("", status_code=201)
async def create_conversation(body: NewConversation, request: Request) -> dict[str, Any]:
    return await _conversations(request).create(body)


@conversations_router.get("/export")
async def export_all(request: Request) -> JSONResponse:
    """Every conversation, as a file to download (``POST .../import`` reads it back)."""
    return _download(await _conversations(request).export())


@conversations_router.post("/import", status_code=201)
async def import_conversations(body: ExportFile, request: Request) -> dict[str, Any]:
    """Add the conversations of an export file as new ones (nothing is replaced)."""
    return {"object": "list", "data": await _conversations(request).import_file(body)}


@conversations_router.get("/{ident}")
async def get_conversation(ident: Id, request: Request) -> dict[str, Any]:
    """One conversation with all its messages (every branch), in the order written."""
    return await _conversations(request).get(ident)


@conversations_router.patch("/{ident}")
async def update_conversation(
    ident: Id, body: ConversationUpdate, request: Request
) -> dict[str, Any]:
    """Rename it, change its settings, or switch the branch it shows."""
    return await _conversations(request).update(ident, body)


@conversations_router.delete("/{ident}")
async def delete_conversation(ident: Id, request: Request) -> dict[str, Any]:
    await _conversations(request).delete(ident)
    return {"id": ident, "object": "conversation.deleted", "deleted": True}


@conversations_router.post("/{ident}/messages", status_code=201)
async def add_message(ident: Id, body: NewMessage, request: Request) -> dict[str, Any]:
    """Add a message under its parent; it becomes what the conversation shows."""
    return await _conversations(request).add_message(ident, body)


@conversations_router.get("/{ident}/images/{image_id}")
async def get_image(ident: Id, image_id: ImageId, request: Request) -> Response:
    """An image a message of the conversation holds, as its bytes (the page shows it as a
    ``data:`` URL)."""
    image = await _conversations(request).image(ident, image_id)
    return Response(image.data, media_type=image.media_type, headers=IMAGE_HEADERS)


@conversations_router.get("/{ident}/export")
async def export_one(ident: Id, request: Request) -> JSONResponse:
    return _download(await _conversations(request).export(ident))


def _download(document: dict[str, Any]) -> JSONResponse:
    name = export_filename(document)
    return JSONResponse(document, headers={"Content-Disposition": f'attachment; filename="{name}"'})
