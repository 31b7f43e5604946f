"""GBNF text, the grammar language of llama.cpp's grammar sampler: string literals, and the
decimal integers of a range (how ``minimum``/``maximum`` are enforced)."""

from __future__ import annotations

MAX_DIGITS = 15  # integers and fractions stay within what JSON parsers read exactly


def literal(text: str) -> str:
    """A GBNF string literal for ``text``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    escaped = escaped.replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def integer_range(low: int | None, high: int | None) -> list[str]:
    """GBNF alternatives matching the decimal integers in [low, high] (None: unbounded)."""
    limit = 10**MAX_DIGITS - 1
    alternatives = []
    if low is None or low < 0:
        # Negative part: "-" and the magnitudes |high'|..|low|.
        top = limit if low is None else -low
        bottom = 1 if high is None or high >= 0 else -high
        if bottom <= top:
            alternatives += [f'"-" {p}' for p in _magnitudes(bottom, top)]
    if high is None or high >= 0:
        bottom = 0 if low is None or low < 0 else low
        top = limit if high is None else high
        if bottom <= top:
            alternatives += _magnitudes(bottom, top)
    return alternatives


def _magnitudes(low: int, high: int) -> list[str]:
    """Alternatives for the non-negative integers low..high, without leading zeros."""
    patterns = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        a = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        b = min(high, 10**digits - 1)
        if a <= b:
            patterns += _same_length(str(a), str(b))
    return patterns


def _same_length(a: str, b: str) -> list[str]:
    """Alternatives for numbers from a to b, both of the same number of digits."""
    if a == b:
        return [literal(a)]
    if len(a) == 1:
        return [f"[{a}-{b}]"]
    common = 0
    while a[common] == b[common]:
        common += 1
    if common:
        return [f"{literal(a[:common])} {p}" for p in _same_length(a[common:], b[common:])]
    rest = len(a) - 1
    tail = f"[0-9]{{{rest}}}"
    low_full = a[1:] == "0" * rest
    high_full = b[1:] == "9" * rest
    first = int(a[0]) + (0 if low_full else 1)
    last = int(b[0]) - (0 if high_full else 1)
    patterns = []
    if not low_full:
        patterns += [f"{literal(a[0])} {p}" for p in _same_length(a[1:], "9" * rest)]
    if first <= last:
        patterns.append(f"[{first}-{last}] {tail}")
    if not high_full:
        patterns += [f"{literal(b[0])} {p}" for p in _same_length("0" * rest, b[1:])]
    return patterns
