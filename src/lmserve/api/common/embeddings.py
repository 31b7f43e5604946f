"""Embeddings: strings or token arrays in, normalised vectors out (OpenAI's
``/v1/embeddings`` and LM Studio's ``/api/v0/embeddings``)."""

from __future__ import annotations

import base64
from typing import Any

from lmserve.api.common.bounds import MAX_INPUTS
from lmserve.api.common.errors import ContextLengthExceededError, InvalidRequestError
from lmserve.api.common.protocol import EmbeddingRequest
from lmserve.api.common.serving import refuse_reranker
from lmserve.models.loader import LoadedModel
from lmserve.models.manager import ModelManager


async def _token_lists(body: EmbeddingRequest, model: LoadedModel) -> list[list[int]]:
    raw = body.input
    vocab = model.vocab
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise InvalidRequestError("'input' must not be empty.", param="input")
    if len(raw) > MAX_INPUTS:
        raise InvalidRequestError(f"'input' may hold at most {MAX_INPUTS} items.", param="input")
    if all(isinstance(item, int) for item in raw):
        raw = [raw]  # one token array
    lists: list[list[int]] = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            if not item:
                raise InvalidRequestError(f"input[{index}] is an empty string.", param="input")
            lists.append(
                await model.engine.tokenize(item, add_special=vocab.add_bos, parse_special=False)
            )
        else:
            if not item or any(token >= vocab.n_vocab for token in item):
                raise InvalidRequestError(
                    f"input[{index}] has no tokens or a token id outside the vocabulary "
                    f"(0 to {vocab.n_vocab - 1}).",
                    param="input",
                )
            lists.append(list(item))
    return lists


def _encode(vector: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


async def create_embeddings(body: EmbeddingRequest, models: ModelManager) -> dict[str, Any]:
    async with models.using(body.model, body.ttl, kind="embeddings") as model:
        refuse_reranker(model, "gives no embeddings")
        token_lists = await _token_lists(body, model)
        dimensions = model.vocab.n_embd
        if body.dimensions is not None and body.dimensions != dimensions:
            raise InvalidRequestError(
                f"This model's embeddings have {dimensions} dimensions; 'dimensions' "
                "cannot shorten or lengthen them.",
                param="dimensions",
                code="unsupported_value",
            )
        for index, tokens in enumerate(token_lists):
            if len(tokens) > model.n_ctx:
                raise ContextLengthExceededError(
                    f"input[{index}] has {len(tokens)} tokens; this model embeds at most "
                    f"{model.n_ctx}.",
                    param="input",
                )
        vectors = await model.engine.embed(token_lists)
    used = sum(len(tokens) for tokens in token_lists)
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": index,
                "embedding": _encode(vector, body.encoding_format),
            }
            for index, vector in enumerate(vectors)
        ],
        "model": model.identifier,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
