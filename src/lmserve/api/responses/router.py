"""OpenAI's Responses API routes: ``POST /v1/responses``, and stored responses by id."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.serving import serve_generation
from lmserve.api.common.tool_loop import serve_with_tools
from lmserve.api.common.tools import mark_tools_left_out, note_tools_left_out
from lmserve.api.responses.items import item_page
from lmserve.api.responses.protocol import ResponsesRequest
from lmserve.api.responses.service import (
    ResponseTurn,
    mcp_uses,
    response_not_found,
    response_store,
)
from lmserve.mcp.toolset import Toolset

router = APIRouter(prefix="/v1")


@router.post("/responses", response_model=None)
async def create_response(
    body: ResponsesRequest, request: Request, response: Response
) -> Response | Any:
    turn = ResponseTurn(body, response_store(request))
    note_tools_left_out(turn.id, body.hosted_tools)
    state = request.app.state
    uses = mcp_uses(body, state.mcp_settings, state.mcp)
    if not uses:
        if turn.approval_requests():
            raise InvalidRequestError(
                "An 'mcp_approval_response' needs its MCP server among the request's tools.",
                param="input",
            )
        answer = await serve_generation(request, turn.chat_request(), turn)
    else:

        async def run_approved(toolset: Toolset) -> None:
            await turn.run_approved(toolset, state.logs)

        answer = await serve_with_tools(
            request,
            turn,
            uses,
            turn.chat_request,
            param="tools",
            max_rounds=body.max_tool_rounds,
            max_calls=body.max_tool_calls,
            needs_approval=turn.needs_approval,
            reserved_names=[tool.function.name for tool in turn.tool_names.offered],
            before=run_approved,
        )
    mark_tools_left_out(answer, response, body.hosted_tools)
    return answer


@router.get("/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    stored = response_store(request).get(response_id)
    if stored is None:
        raise response_not_found(response_id)
    return stored.response


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    if not response_store(request).delete(response_id):
        raise response_not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int = Query(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = Query(default=None, max_length=200),
    before: str | None = Query(default=None, max_length=200),
) -> dict[str, Any]:
    """The items that made a response: its input, after those of the turns it continues."""
    stored = response_store(request).get(response_id)
    if stored is None:
        raise response_not_found(response_id)
    return item_page(stored.input_items, limit=limit, order=order, after=after, before=before)
