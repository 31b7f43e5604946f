"""Turning sampled tokens into text that is safe to send: UTF-8 assembly and stop strings."""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class StopMatcher:
    """Finds stop strings in text that arrives piece by piece.

    Text that could still be the start of a stop string is held back until the next piece shows
    whether it is one, so a stop string that spans several tokens never reaches the client.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = [stop for stop in dict.fromkeys(stops) if stop]
        self._longest = max((len(stop) for stop in self._stops), default=0)
        self._pending = ""
        self.stopped_by: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return (text now safe to emit, whether a stop string was found)."""
        if not self._stops:
            return text, False
        pending = self._pending + text
        first: tuple[int, str] | None = None
        for stop in self._stops:
            index = pending.find(stop)
            if index >= 0 and (first is None or index < first[0]):
                first = (index, stop)
        if first is not None:
            self._pending = ""
            self.stopped_by = first[1]
            return pending[: first[0]], True
        keep = self._held_back(pending)
        self._pending = pending[len(pending) - keep :]
        return pending[: len(pending) - keep], False

    def flush(self) -> str:
        """Release what was held back (generation ended without a stop string)."""
        pending, self._pending = self._pending, ""
        return pending

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        for size in range(min(len(text), self._longest - 1), 0, -1):
            suffix = text[-size:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return size
        return 0


class Utf8Assembler:
    """Joins token byte pieces into text, holding back incomplete UTF-8 sequences.

    A multi-byte character (an emoji, CJK) is often split across tokens; decoding each piece on
    its own would emit replacement characters.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
