"""Scoring documents against a query with a reranker model, and the answer's shape."""

from __future__ import annotations

import secrets
from typing import Any

from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.rerank.protocol import RerankRequest
from lmserve.engine.types import RerankInputError
from lmserve.logbus import LogBus
from lmserve.models.loader import LoadedModel
from lmserve.models.manager import ModelManager


def not_a_reranker(model: LoadedModel) -> InvalidRequestError:
    kind = "an embedding model" if model.entry.model_type == "embeddings" else "a chat model"
    return InvalidRequestError(
        f"Model '{model.identifier}' is {kind}, not a reranker: /v1/rerank takes a reranker "
        "(a GGUF whose pooling type is rank, such as bge-reranker or Qwen3-Reranker).",
        param="model",
        code="model_not_reranker",
    )


async def rerank(body: RerankRequest, models: ModelManager, logs: LogBus) -> dict[str, Any]:
    documents = body.texts()
    async with models.using(body.model, body.ttl, kind="reranker") as model:
        if model.entry.model_type != "reranker":
            raise not_a_reranker(model)
        try:
            scored = await model.engine.rerank(body.query, documents)
        except RerankInputError as exc:
            raise InvalidRequestError(
                f"{exc}.", param=f"documents[{exc.index}]", code="context_length_exceeded"
            ) from None
    ranked = sorted(range(len(documents)), key=lambda index: -scored[index][0])
    if body.top_n is not None:
        ranked = ranked[: body.top_n]
    results = []
    for index in ranked:
        result: dict[str, Any] = {"index": index, "relevance_score": scored[index][0]}
        if body.return_documents:
            result["document"] = {"text": documents[index]}
        results.append(result)
    tokens = sum(count for _, count in scored)
    answer = {
        "id": f"rerank-{secrets.token_hex(12)}",
        "model": model.identifier,
        "object": "list",
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    logs.publish(
        "rerank.output",
        request_id=answer["id"],
        model=model.identifier,
        query=body.query,
        documents=len(documents),
        prompt_tokens=tokens,
        results=[{"index": r["index"], "relevance_score": r["relevance_score"]} for r in results],
    )
    return answer
