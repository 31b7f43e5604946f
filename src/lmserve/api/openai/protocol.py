"""Pydantic models of OpenAI's own routes beyond the shared ones: the model list.

The chat, text completion and embedding models are in :mod:`lmserve.api.common.protocol`,
since every text surface is served as one of them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # lmserve's: a model served by Ray Serve replicas lists them (node, slots busy, cached).
    replicas: list[dict[str, Any]] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
