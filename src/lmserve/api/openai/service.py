"""OpenAI's model list: what ``GET /v1/models`` names."""

from __future__ import annotations

import time

from lmserve.api.common.replicas import ReplicaLines, public_line
from lmserve.api.openai.protocol import ModelCard, ModelList
from lmserve.models.manager import ModelManager


def model_list(models: ModelManager, replicas: ReplicaLines) -> ModelList:
    """Loaded models by identifier (a replicated one with its ``replicas``); with JIT
    loading on, every downloaded model too."""
    cards = [
        ModelCard(
            id=model.identifier,
            created=int(model.loaded_at),
            owned_by=model.entry.publisher,
            replicas=[public_line(line) for line in replicas[model.identifier]]
            if model.identifier in replicas
            else None,
        )
        for model in models.loaded()
    ]
    if models.jit:
        loaded_paths = {model.entry.path for model in models.loaded()}
        models.rescan()
        cards += [
            ModelCard(
                id=models.catalog.public_id(entry),
                created=int(entry.path.stat().st_mtime)
                if entry.path.exists()
                else int(time.time()),
                owned_by=entry.publisher,
            )
            for entry in models.catalog.entries
            if entry.path not in loaded_paths
        ]
    return ModelList(data=cards)
