"""The prompt cache's disk tier: block files that outlive the process.

``$LMSERVE_HOME/cache/prompts/<key>/`` holds one model's blocks, where ``<key>`` hashes
everything that decides what a KV cell holds (:func:`state_key`): the GGUF file's sha256,
the llama.cpp build and the CPU features it runs on, and the load settings that change KV
contents.  A state is only ever restored into a context of the same key.

A block file is ``MAGIC``, a ``u32`` header length, a JSON header (the block's key, parent,
start, tokens and coverage, and the state key), the block's bytes, and a CRC-32 of all that
of all that.  Files are written by a thread of their own, behind the engine (to a temporary
name, then renamed: a reader never sees half a file, and two servers sharing a home write
the same bytes under the same name).  A file that is short, corrupt, foreign or of another
format is removed when read and counts as a miss.  A full disk turns writing off, with one
log line.  The folder is kept under its budget least recently used first, by file times,
across every model's folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmserve.engine.prompt_cache.blocks import Block

logger = logging.getLogger("lmserve.engine")

MAGIC = b"LMSPCB02"
_LENGTH = struct.Struct("<I")
# CRC-32: it finds a damaged or short file, which is all it is for (and reads 6 MB in 1.5 ms,
# where blake2b took 7: it is on a restore's path).
_CHECKSUM = struct.Struct("<I")
SUFFIX = ".block"
MODEL_FILE = "model.json"  # what a folder's key stands for, for `lmserve cache ls`
_IDENTITIES = "gguf-sha256.json"  # file hashes, by path, size and modification time


class BlockFileError(ValueError):
    """A block file that is not a whole, current block of this model."""


def _identities(path: Path, cache_root: Path) -> tuple[str, dict[str, object]]:
    stat = path.stat()
    stamp = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    try:
        table = json.loads((cache_root / _IDENTITIES).read_text())
    except (OSError, ValueError):
        table = {}
    return stamp, table if isinstance(table, dict) else {}


def known_sha256(path: Path, cache_root: Path) -> str | None:
    """The sha256 of a GGUF file if an earlier load hashed it (and it is unchanged since)."""
    try:
        stamp, table = _identities(path, cache_root)
    except OSError:
        return None
    known = table.get(stamp)
    return known if isinstance(known, str) else None


def file_sha256(path: Path, cache_root: Path) -> str:
    """The sha256 of a GGUF file, remembered in ``cache_root`` by path, size and time."""
    stamp, table = _identities(path, cache_root)
    known = table.get(stamp)
    if isinstance(known, str):
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 22):
            digest.update(chunk)
    table[stamp] = digest.hexdigest()
    with contextlib.suppress(OSError):
        cache_root.mkdir(parents=True, exist_ok=True)
        _write_atomically(cache_root / _IDENTITIES, json.dumps(table, indent=1).encode())
    return digest.hexdigest()


def state_key(facts: dict[str, object]) -> str:
    """The folder name for states made under ``facts`` (a JSON-able description)."""
    text = json.dumps(facts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_atomically(path: Path, *chunks: bytes | memoryview) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as target:
            for chunk in chunks:
                target.write(chunk)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


@dataclass(frozen=True)
class BlockHeader:
    key: bytes
    parent: bytes
    start: int
    tokens: tuple[int, ...]
    covered: tuple[int, ...]


def encode(
    block: Block, data: np.ndarray, covered: tuple[int, ...], state: str
) -> tuple[bytes, memoryview, bytes]:
    """A block's file (with ``data`` its bytes for the coverage ``covered``), in the pieces
    to write one after another: magic and header, bytes, checksum."""
    header = json.dumps(
        {
            "state": state,
            "key": block.key.hex(),
            "parent": block.parent.hex(),
            "start": block.start,
            "tokens": list(block.tokens),
            "covered": list(covered),
        },
        separators=(",", ":"),
    ).encode()
    head = MAGIC + _LENGTH.pack(len(header)) + header
    payload = memoryview(np.ascontiguousarray(data)).cast("B")
    checksum = zlib.crc32(payload, zlib.crc32(head))
    return head, payload, _CHECKSUM.pack(checksum)


def read_header(path: Path, state: str) -> tuple[BlockHeader, int]:
    """A block file's header and where its bytes start; :class:`BlockFileError` if it is not
    one of this state key's."""
    with open(path, "rb") as source:
        head = source.read(len(MAGIC) + _LENGTH.size)
        if len(head) < len(MAGIC) + _LENGTH.size or not head.startswith(MAGIC):
            raise BlockFileError("not a block file of this version")
        (length,) = _LENGTH.unpack_from(head, len(MAGIC))
        if length > 1 << 20:
            raise BlockFileError("a header too long")
        raw = source.read(length)
    return _parse_header(raw, state), len(head) + length


def _parse_header(raw: bytes | memoryview, state: str) -> BlockHeader:
    try:
        fields = json.loads(bytes(raw))
        if fields["state"] != state:
            raise BlockFileError("a block of another model or settings")
        return BlockHeader(
            key=bytes.fromhex(fields["key"]),
            parent=bytes.fromhex(fields["parent"]),
            start=int(fields["start"]),
            tokens=tuple(int(token) for token in fields["tokens"]),
            covered=tuple(int(first) for first in fields["covered"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BlockFileError(f"a header that does not parse ({exc})") from None


def read_block(path: Path, state: str, expected: Block) -> np.ndarray:
    """The bytes of ``expected``'s file, checked (a read-only view of what was read);
    :class:`BlockFileError` if they are not whole, or not that block's."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BlockFileError("gone") from None
    if len(data) < len(MAGIC) + _LENGTH.size + _CHECKSUM.size or not data.startswith(MAGIC):
        raise BlockFileError("not a block file of this version")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size + length
    end = len(data) - _CHECKSUM.size
    if start > end:
        raise BlockFileError("truncated")
    view = memoryview(data)
    if zlib.crc32(view[:end]) != _CHECKSUM.unpack_from(data, end)[0]:
        raise BlockFileError("its checksum does not match")
    header = _parse_header(view[len(MAGIC) + _LENGTH.size : start], state)
    if (header.key, header.parent, header.start, header.tokens) != (
        expected.key,
        expected.parent,
        expected.start,
        expected.tokens,
    ):
        raise BlockFileError("another block than its name says")
    return np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)


class DiskTier:
    """One model's block files: scanned at start, written behind, read on a restore."""

    def __init__(
        self,
        root: Path,
        state: str,
        description: dict[str, object],
        budget: int,
        on_written: Callable[[Block, int, tuple[int, ...]], None],
        on_removed: Callable[[bytes], None],
    ) -> None:
        """``on_written(block, size, covered)`` and ``on_removed(key)`` tell the index, from
        the writing thread, that a block's file was written or is gone."""
        self.root = root
        self.state = state
        self.folder = root / state
        self.budget = budget
        self.writable = True
        self.writes = 0
        self.write_errors = 0
        self.removed_bad = 0
        self._on_written = on_written
        self._on_removed = on_removed
        self._queue: queue.Queue[tuple[Block, np.ndarray, tuple[int, ...]] | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self.folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            description = {**description, "state": state, "written_at": time.time()}
            _write_atomically(self.folder / MODEL_FILE, json.dumps(description, indent=1).encode())
        self._thread = threading.Thread(
            target=self._write_loop, name="prompt-cache-disk", daemon=True
        )
        self._thread.start()

    def path(self, key: bytes) -> Path:
        return self.folder / (key.hex() + SUFFIX)

    def scan(self) -> list[tuple[BlockHeader, int]]:
        """Every readable block file of this folder (header, size); bad ones are removed."""
        found = []
        for entry in os.scandir(self.folder):
            if not entry.name.endswith(SUFFIX):
                continue
            path = Path(entry.path)
            try:
                header, _ = read_header(path, self.state)
                if path.name != header.key.hex() + SUFFIX:
                    raise BlockFileError("named for another block")
                found.append((header, entry.stat().st_size))
            except BlockFileError as exc:
                self.remove_bad(path, str(exc))
            except OSError:
                continue  # removed meanwhile by another server sharing this home
        return found

    def read(self, block: Block) -> np.ndarray | None:
        """``block``'s bytes from its file, or ``None`` (the file is gone or bad: removed)."""
        path = self.path(block.key)
        try:
            data = read_block(path, self.state, block)
        except BlockFileError as exc:
            if str(exc) != "gone":
                self.remove_bad(path, str(exc))
            return None
        except OSError as exc:
            logger.warning("prompt cache: cannot read %s: %s", path.name, exc)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used: the last to be evicted
        return data

    def touch(self, blocks: list[Block]) -> None:
        """Mark the files of ``blocks`` (a chain from the root) used, descendants first."""
        for block in reversed(blocks):
            if block.disk_bytes:
                with contextlib.suppress(OSError):
                    os.utime(self.path(block.key))

    def remove_bad(self, path: Path, why: str) -> None:
        logger.warning("prompt cache: removed %s: %s", path.name, why)
        self.removed_bad += 1
        with contextlib.suppress(OSError):
            path.unlink()

    def remove_all(self) -> None:
        """Remove every block file of this model's folder."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                if entry.name.endswith(SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def remove(self, key: bytes) -> None:
        with contextlib.suppress(OSError):
            self.path(key).unlink()

    # -- writing ---------------------------------------------------------------------------------
    def write(self, blocks: list[Block]) -> None:
        """Write ``blocks`` (a chain from the root) behind: descendants first, so that their
        files are older than their parents' and evicted before them."""
        if not self.writable:
            return
        # Each block with its bytes as they are now: memory may evict it before its turn.
        writes = [(block, block.data, block.covered) for block in blocks if block.data is not None]
        with self._idle:
            self._pending += len(writes)
        for write in reversed(writes):
            self._queue.put(write)

    def flush(self, timeout: float) -> bool:
        """Wait until the writes asked for are done (at most ``timeout`` s); whether they are."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float) -> None:
        """Finish the writes in flight (within ``timeout`` s), then stop the writing thread."""
        if not self.flush(timeout):
            logger.warning("prompt cache: %d block writes left undone at close", self._pending)
        self._queue.put(None)
        self._thread.join(1.0)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._write_one(*item)
                if self._queue.empty():
                    self._keep_budget()
            except Exception:  # never take the worker down for a cache
                logger.exception("prompt cache: writing a block failed")
            finally:
                with self._idle:
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()

    def _write_one(self, block: Block, data: np.ndarray, covered: tuple[int, ...]) -> None:
        if not self.writable or (block.disk_bytes and block.written == covered):
            return  # written already
        try:
            encoded = encode(block, data, covered, self.state)
            _write_atomically(self.path(block.key), *encoded)
        except OSError as exc:
            self.write_errors += 1
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                self.writable = False
                logger.warning(
                    "prompt cache: writing to %s failed (%s); the disk tier writes no more "
                    "in this process",
                    self.folder,
                    exc.strerror or exc,
                )
            return
        self.writes += 1
        self._on_written(block, sum(len(chunk) for chunk in encoded), covered)

    def _keep_budget(self) -> None:
        """Remove the least recently used block files of every model's folder until they take
        ``budget`` bytes at most."""
        files = []
        total = 0
        with contextlib.suppress(OSError):
            for folder in os.scandir(self.root):
                if not folder.is_dir():
                    continue
                for entry in os.scandir(folder.path):
                    if entry.name.endswith(SUFFIX):
                        with contextlib.suppress(OSError):
                            stat = entry.stat()
                            files.append((stat.st_mtime_ns, stat.st_size, entry.path, folder.path))
                            total += stat.st_size
        if total <= self.budget:
            return
        files.sort()
        mine = str(self.folder)
        for _, size, path, folder in files:
            if total <= self.budget:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
                if folder == mine:
                    name = os.path.basename(path)[: -len(SUFFIX)]
                    with contextlib.suppress(ValueError):
                        self._on_removed(bytes.fromhex(name))


def list_folders(root: Path) -> list[dict[str, object]]:
    """Every model's folder of block files under ``root``: what it is for (its
    ``model.json``), its files' count and bytes, and when one was last used."""
    listing = []
    with contextlib.suppress(OSError):
        for folder in sorted(os.scandir(root), key=lambda entry: entry.name):
            if not folder.is_dir():
                continue
            files = size = 0
            last_used = 0.0
            with contextlib.suppress(OSError):
                for entry in os.scandir(folder.path):
                    if entry.name.endswith(SUFFIX):
                        with contextlib.suppress(OSError):
                            stat = entry.stat()
                            files += 1
                            size += stat.st_size
                            last_used = max(last_used, stat.st_mtime)
            try:
                about = json.loads((Path(folder.path) / MODEL_FILE).read_text())
            except (OSError, ValueError):
                about = {}
            about = about if isinstance(about, dict) else {}
            listing.append(
                {
                    "key": folder.name,
                    "model": about.get("model"),
                    "path": about.get("path"),
                    "settings": about.get("settings"),
                    "blocks": files,
                    "bytes": size,
                    "last_used": last_used or None,
                }
            )
    return listing


def clear_folders(root: Path, keys: set[str] | None = None) -> int:
    """Remove the block files of every folder under ``root`` (or of those named in
    ``keys``); how many were removed."""
    removed = 0
    with contextlib.suppress(OSError):
        for folder in os.scandir(root):
            if not folder.is_dir() or (keys is not None and folder.name not in keys):
                continue
            with contextlib.suppress(OSError):
                for entry in os.scandir(folder.path):
                    if entry.name.endswith(SUFFIX):
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                            removed += 1
    return removed
