"""The rerank request, in the Jina/Cohere shape llama-server and vLLM take."""

from __future__ import annotations

from pydantic import Field

from lmserve.api.common.bounds import TTL
from lmserve.api.common.protocol import RequestModel

MAX_DOCUMENTS = 1024  # per request: each is a pair for the model to read


class TextDocument(RequestModel):
    text: str


class RerankRequest(RequestModel):
    model: str | None = Field(default=None, min_length=1)  # see GenerationRequestFields.model
    query: str = Field(min_length=1)
    documents: list[str | TextDocument] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    top_n: int | None = Field(default=None, ge=1, le=MAX_DOCUMENTS)
    return_documents: bool = False
    ttl: TTL | None = None

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]
