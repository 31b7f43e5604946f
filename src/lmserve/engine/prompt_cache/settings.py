"""The prompt cache's settings, as the server sends them to a model's worker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptCacheSettings:
    """The budgets of both tiers; ``disk_folder`` ``None``: no disk tier."""

    memory_bytes: int
    disk_bytes: int = 0
    disk_folder: str | None = None
    disk_min_tokens: int = 1024  # states shorter than this stay in memory only
