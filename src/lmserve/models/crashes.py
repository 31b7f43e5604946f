"""Crash history per model: how many in a row, how long to wait before loading it again.

A model whose worker dies is loaded again: at once after a first crash, 1, 2 and 4 seconds
after the next ones, and after the fifth crash in a row not at all until a user loads it.  Crashes
more than :data:`STREAK_WINDOW` apart are not "in a row": a model that served for ten minutes
starts afresh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STREAK_WINDOW = 600.0  # seconds
MAX_CRASHES = 5  # in a row, after which the model is not loaded again by itself
MAX_BACKOFF = 60.0


@dataclass
class CrashRecord:
    identifier: str
    streak: int = 0
    total: int = 0
    last_reason: str = ""
    last_requests: tuple[str, ...] = ()
    last_at: float = 0.0  # time.monotonic()
    last_wall: float = 0.0  # time.time(), for reports
    retry_at: float = 0.0  # time.monotonic() before which no load is tried

    @property
    def gave_up(self) -> bool:
        return self.streak >= MAX_CRASHES

    def retry_in(self, now: float | None = None) -> float:
        """Seconds until the model may be loaded again (0: now; inf: not by itself)."""
        if self.gave_up:
            return float("inf")
        return max(0.0, self.retry_at - (time.monotonic() if now is None else now))

    def describe(self) -> dict[str, object]:
        retry = self.retry_in()
        return {
            "identifier": self.identifier,
            "crashes_in_a_row": self.streak,
            "crashes": self.total,
            "last_crash": self.last_reason,
            "last_crash_at": round(self.last_wall, 3),
            "last_requests": list(self.last_requests),
            "retry_in": None if retry == float("inf") else round(retry, 3),
            "gave_up": self.gave_up,
        }


def backoff(streak: int) -> float:
    """Seconds to wait after the ``streak``-th crash in a row: 0, 1, 2, 4, 8, ... (capped)."""
    return 0.0 if streak <= 1 else min(MAX_BACKOFF, 2.0 ** (streak - 2))


@dataclass
class CrashHistory:
    records: dict[str, CrashRecord] = field(default_factory=dict)

    def note(self, identifier: str, reason: str, requests: tuple[str, ...] = ()) -> CrashRecord:
        now = time.monotonic()
        record = self.records.setdefault(identifier, CrashRecord(identifier))
        if record.streak and now - record.last_at > STREAK_WINDOW:
            record.streak = 0
        record.streak += 1
        record.total += 1
        record.last_reason = reason
        record.last_requests = requests
        record.last_at = now
        record.last_wall = time.time()
        record.retry_at = now + backoff(record.streak)
        return record

    def get(self, identifier: str) -> CrashRecord | None:
        return self.records.get(identifier)

    def forgive(self, identifier: str) -> None:
        """A user loaded the model by hand: its next crash is a first one again."""
        record = self.records.get(identifier)
        if record is not None:
            record.streak = 0
            record.retry_at = 0.0

    def report(self) -> list[dict[str, object]]:
        return [record.describe() for record in self.records.values()]
