"""Reasoning models: what they write inside ``<think>…</think>`` is not the answer.

It goes to ``reasoning_content`` (LM Studio's and DeepSeek's name), never to ``content``.
Reasoning counts only at the start of a reply; a template may also open the ``<think>``
itself at the end of the prompt, in which case the reply starts inside it.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def _partial(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ReasoningSplitter:
    """Splits streamed text into (reasoning, answer) pieces."""

    def __init__(self, starts_inside: bool = False) -> None:
        self._state = "inside" if starts_inside else "start"
        self._pending = ""
        self.reasoned = starts_inside  # a reasoning block was opened

    def feed(self, text: str) -> tuple[str, str]:
        pending = self._pending + text
        self._pending = ""
        reasoning = answer = ""
        while pending:
            if self._state == "start":
                stripped = pending.lstrip()
                if not stripped:
                    self._pending = pending
                    break
                if stripped.startswith(OPEN):
                    self._state, pending = "inside", stripped[len(OPEN) :]
                    self.reasoned = True
                elif OPEN.startswith(stripped):
                    self._pending = pending  # maybe "<thi": wait
                    break
                else:
                    self._state = "answer"
            elif self._state == "inside":
                index = pending.find(CLOSE)
                if index >= 0:
                    reasoning += pending[:index]
                    self._state, pending = "after", pending[index + len(CLOSE) :]
                    continue
                keep = _partial(pending, CLOSE)
                reasoning += pending[: len(pending) - keep]
                self._pending = pending[len(pending) - keep :]
                break
            elif self._state == "after":
                stripped = pending.lstrip()  # the blank line between thought and answer
                if not stripped:
                    break
                self._state, pending = "answer", stripped
            else:
                answer += pending
                break
        return reasoning, answer

    def finish(self) -> tuple[str, str]:
        pending, self._pending = self._pending, ""
        if self._state == "inside":
            return pending, ""
        return "", pending if self._state != "after" else pending.lstrip()


def split_reasoning(text: str, starts_inside: bool = False) -> tuple[str | None, str]:
    """(reasoning or None, answer) of a whole reply."""
    splitter = ReasoningSplitter(starts_inside)
    reasoning, answer = splitter.feed(text)
    more_reasoning, more_answer = splitter.finish()
    reasoning += more_reasoning
    answer += more_answer
    if not splitter.reasoned:
        return None, answer
    return reasoning.strip(), answer
