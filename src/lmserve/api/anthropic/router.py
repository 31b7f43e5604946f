"""Anthropic's Messages API routes: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Every error on these routes leaves in Anthropic's shape (:mod:`lmserve.api.anthropic.errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmserve.api.anthropic.protocol import CountTokensRequest, MessagesRequest
from lmserve.api.anthropic.service import MessageTurn, chat_request, mcp_uses
from lmserve.api.common.chat import prepare_chat
from lmserve.api.common.errors import api_error_for
from lmserve.api.common.images import ImageReader
from lmserve.api.common.serving import serve_generation
from lmserve.api.common.tool_loop import serve_with_tools
from lmserve.api.common.tools import mark_tools_left_out, note_tools_left_out
from lmserve.models.manager import ModelManager

router = APIRouter(prefix="/v1")


@router.post("/messages", response_model=None)
async def create_message(
    body: MessagesRequest, request: Request, response: Response
) -> Response | Any:
    turn = MessageTurn()
    note_tools_left_out(turn.id, body.server_tools)
    state = request.app.state
    try:
        uses = mcp_uses(body, state.mcp_settings)
        if not uses:
            answer = await serve_generation(request, chat_request(body), turn)
        else:
            answer = await serve_with_tools(
                request,
                turn,
                uses,
                lambda server_tools: chat_request(body, server_tools),
                param="mcp_servers",
                max_rounds=body.max_tool_rounds,
                reserved_names=[tool.name for tool in body.tools or []],
            )
    except Exception as exc:
        # Unmapped exceptions would reach Starlette's outermost handler, past the reshaping.
        raise api_error_for(exc) from exc
    mark_tools_left_out(answer, response, body.server_tools)
    return answer


@router.post("/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict[str, int]:
    models: ModelManager = request.app.state.models
    images: ImageReader = request.app.state.images
    try:
        chat_body = chat_request(body)
        async with models.using(body.model) as model:
            await images.read(chat_body, model)  # an image's tokens are counted too
            prepared = await prepare_chat(chat_body, model)
    except Exception as exc:
        raise api_error_for(exc) from exc
    return {"input_tokens": len(prepared.prompt_tokens[0])}
