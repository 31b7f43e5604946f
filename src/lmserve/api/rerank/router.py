"""The rerank routes: llama-server's and vLLM's paths for one endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from lmserve.api.rerank.protocol import RerankRequest
from lmserve.api.rerank.service import rerank

router = APIRouter()


@router.post("/v1/rerank")
@router.post("/v2/rerank")
@router.post("/rerank")
async def create_rerank(body: RerankRequest, request: Request) -> dict[str, Any]:
    """Documents scored against a query by a reranker, best first."""
    state = request.app.state
    return await rerank(body, state.models, state.logs)
