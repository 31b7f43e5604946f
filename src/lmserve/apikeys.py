"""API keys: reading them, and checking a presented key in constant time.

Kept free of web-framework imports: the command line reads key files too.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

ENV_VAR = "LMSERVE_API_KEY"  # the server's keys, and the key client commands send


class KeyFileError(ValueError):
    """A key is unusable, or a key file cannot be read or holds no key."""


def check_key(key: str) -> str:
    """A usable key: not empty, no whitespace (keys travel in headers and in a variable)."""
    if not key or any(ch.isspace() for ch in key):
        raise KeyFileError("an API key must be non-empty and contain no whitespace")
    return key


def read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise KeyFileError(f"cannot read the API key file {path}: {reason}") from exc
    lines = (line.strip() for line in text.splitlines())
    keys = [check_key(line) for line in lines if line and not line.startswith("#")]
    if not keys:
        raise KeyFileError(f"the API key file {path} holds no key")
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class APIKeys:
    """The keys the server accepts; empty: any key (or none) will do.

    Checked in constant time: a presented key is hashed, and its digest compared with every
    configured key's digest by :func:`hmac.compare_digest`, with no early exit, so neither
    how much of a key matches, nor its length, nor which key matched shows in the time taken.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._digests = tuple(_digest(key) for key in keys)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str | None) -> bool:
        if not self._digests:
            return True
        digest = _digest(presented or "")
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched and bool(presented)
