"""The prompt cache of one model's context: states of sequences kept beyond their slots.

When a request ends, its slot's KV cells (its prompt and answer) are saved here as blocks
(:mod:`.blocks`), in memory and, for long prompts, behind it in files (:mod:`.disk`).  A
new request restores the longest prefix of its prompt that blocks hold into its slot and
reads only the rest: eight conversations over four slots each read their prompt once, and
an agent's 20,000-token prompt is read once across restarts of the server.

It is owned by the engine thread: :meth:`save` and :meth:`restore` run there, between
steps.  :meth:`stats` and :meth:`clear` may be called from other threads.

Exactness: a restored cell holds the bytes that computing it gave, in the same place, so
a request gets the answer it would get had its slot kept the prefix.  A sliding-window cache
(Gemma 3's) writes only the cells of its last window into a state: the cache keeps those of
the window at the end of the prompt too (:meth:`PromptCache.window`), restores a prefix only
where every cell its window needs is held (else less of it, or none), and puts zeros where
the window masks, so that every cell sits where computing the prefix would have put it
(llama.cpp's attention over fewer cells rounds differently).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp as C
import numpy as np

from lmserve.engine.llama import LlamaContext
from lmserve.engine.prompt_cache.blocks import BLOCK_TOKENS, Block, BlockIndex, Match
from lmserve.engine.prompt_cache.disk import DiskTier, state_key
from lmserve.engine.prompt_cache.settings import PromptCacheSettings
from lmserve.engine.prompt_cache.state import (
    Cells,
    Layout,
    Part,
    StateFormatError,
    assemble,
    parse,
    state_size,
)

logger = logging.getLogger("lmserve.engine")

# Seconds a graceful stop waits for the disk writes asked for.
CLOSE_WRITE_TIMEOUT = 20.0
# llama_state_seq_get_data_ext's flag for the sliding-window cache's part of a state alone.
_WINDOW_ONLY = C.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY


@dataclass(frozen=True)
class WindowCells:
    """A sequence's sliding-window cells when it held ``n_tokens`` (its prompt)."""

    n_tokens: int
    cells: Cells

    def joins(self, n_tokens: int, n_swa: int) -> bool:
        """Whether these cells and those of a state of ``n_tokens`` (the same sequence, later)
        make one run of positions."""
        return self.n_tokens <= n_tokens <= self.n_tokens + n_swa


@dataclass
class Restored:
    """What a restore put into a slot: ``length`` tokens, so many from each tier; its
    sliding-window layers hold real cells from ``window_floor`` on (zeros before)."""

    length: int
    memory: int = 0
    disk: int = 0
    window_floor: int = 0


@dataclass
class TierCounts:
    hits: int = 0  # restores served (in part) from this tier
    tokens: int = 0  # tokens restored from it
    bytes_read: int = 0


@dataclass
class _Counts:
    saves: int = 0
    saved_blocks: int = 0
    misses: int = 0
    restore_seconds: float = 0.0  # all of restoring: finding, reading files, putting together
    read_seconds: float = 0.0  # of which reading block files
    assemble_seconds: float = 0.0  # of which putting a state together from blocks
    set_seconds: float = 0.0  # of which llama.cpp taking it in (llama_state_seq_set_data)
    save_seconds: float = 0.0
    memory: TierCounts = field(default_factory=TierCounts)
    disk: TierCounts = field(default_factory=TierCounts)


class PromptCache:
    """Sequence states of one context, in memory and on disk, found by their tokens."""

    def __init__(
        self, context: LlamaContext, settings: PromptCacheSettings, layout: Layout
    ) -> None:
        """``layout``: the context's state layout (:func:`probe_layout`).  The disk tier is
        attached afterwards (:meth:`attach_disk`), once the model's file is identified."""
        self.context = context
        self.settings = settings
        self.layout = layout
        self.n_swa = context.n_swa
        # A model with sliding-window layers has them in the last section (the second,
        # where others are in a full cache); the first state saved checks it.
        self._windowed = [
            self.n_swa > 0 and index == len(layout.sections) - 1
            for index in range(len(layout.sections))
        ]
        self._index = BlockIndex()
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._buffer = np.empty(0, dtype=np.uint8)
        self.enabled = True
        self.disk: DiskTier | None = None

    def attach_disk(self, facts: dict[str, object], description: dict[str, object]) -> None:
        """Keep long states in files too, under a key made of ``facts`` (what decides KV
        contents) and the layout; the files already there become restorable."""
        settings = self.settings
        if not settings.disk_folder or settings.disk_bytes <= 0:
            return
        state = state_key({**facts, "layout": self.layout.describe()})
        try:
            disk = DiskTier(
                Path(settings.disk_folder),
                state,
                description,
                settings.disk_bytes,
                self._written,
                self._removed,
            )
            found = disk.scan()
        except OSError as exc:
            logger.warning("prompt cache: no disk tier (%s)", exc)
            return
        with self._lock:
            for header, size in found:
                block = Block(
                    header.key, header.parent, header.start, header.tokens, header.covered
                )
                if len(block.covered) != len(self.layout.sections):
                    disk.remove_bad(disk.path(block.key), "another layout")
                    continue
                self._index.add(block)
                self._index.on_disk(block, size, header.covered)
            self.disk = disk
        if found:
            logger.info(
                "prompt cache: %d blocks of this model on disk (%.1f MB)",
                len(found),
                sum(size for _, size in found) / 1e6,
            )

    # -- saving ---------------------------------------------------------------------------------
    def save(self, seq: int, tokens: list[int], window: WindowCells | None = None) -> None:
        """Keep what sequence ``seq``'s cells hold (``tokens``, from position 0); ``window``:
        its sliding-window cells as they were when its prompt was read (:meth:`window`), which
        the state no longer holds once the answer has moved the window on."""
        if not self.enabled or not tokens:
            return
        started = time.perf_counter()
        links = self._index.chain(tokens)
        if window is not None and not window.joins(len(tokens), self.n_swa):
            window = None
        firsts = self._firsts(len(tokens), window)
        with self._lock:
            wanted = self._wanted(links, firsts)
        if wanted:
            try:
                cells = self._read_state(seq, len(tokens), window)
            except StateFormatError as exc:
                self._disable(f"a state of an unexpected form ({exc})")
                return
            if cells is None:
                return
            made = [self._make_block(link, tokens, cells, firsts) for link in wanted]
            with self._lock:
                for block in made:
                    for dropped in self._index.add(block):
                        if self.disk is not None and dropped.disk_bytes == 0:
                            self.disk.remove(dropped.key)
                self._counts.saved_blocks += len(made)
        with self._lock:
            chain = [self._index.blocks[key] for key, *_ in links if key in self._index.blocks]
            self._index.touch(chain)
            self._index.evict(self.settings.memory_bytes)
            self._counts.saves += 1
            self._counts.save_seconds += time.perf_counter() - started
        if self.disk is not None and len(tokens) >= self.settings.disk_min_tokens:
            unwritten = [
                block
                for block in chain
                if block.data is not None and block.written != block.covered
            ]
            if unwritten:
                self.disk.write(unwritten)

    def window(self, seq: int, n_tokens: int) -> WindowCells | None:
        """Sequence ``seq``'s sliding-window cells now, when it holds ``n_tokens`` (its prompt,
        just read): what a later request with this prompt (a regenerate, the same first
        request of a new agent session) needs restored, and what the state saved at the end
        of the answer no longer has.  ``None`` for a model without such layers."""
        if not self.enabled or not any(self._windowed) or n_tokens <= 1:
            return None
        ctx = self.context.handle
        size = C.llama_state_seq_get_size_ext(ctx, seq, _WINDOW_ONLY)
        buffer = np.empty(size, dtype=np.uint8)
        pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        if C.llama_state_seq_get_data_ext(ctx, pointer, size, seq, _WINDOW_ONLY) != size:
            return None
        try:
            layout, cells = parse(buffer, seq, self.layout.sections[-1].n_stream)
        except StateFormatError:
            return None
        if layout.sections != self.layout.sections[-1:]:
            return None
        expected = np.arange(max(0, n_tokens - self.n_swa), n_tokens, dtype=np.int32)
        if not np.array_equal(cells[0].positions, expected):
            return None
        return WindowCells(n_tokens, cells[0])

    def _firsts(self, n_tokens: int, window: WindowCells | None) -> tuple[int, ...]:
        """Per section, the first position a state of ``n_tokens`` (with ``window``) holds."""
        end = window.n_tokens if window is not None else n_tokens
        start = max(0, end - self.n_swa)
        return tuple(start if windowed else 0 for windowed in self._windowed)

    def _wanted(
        self, links: list[tuple[bytes, bytes, int, int]], firsts: tuple[int, ...]
    ) -> list[tuple[bytes, bytes, int, int]]:
        """The links of a chain to make blocks for: missing ones, or held with less of a
        window than this state has."""
        wanted = []
        for link in links:
            key, _, start, stop = link
            block = self._index.blocks.get(key)
            if block is None:
                wanted.append(link)
                continue
            covered = self._coverage(start, stop, firsts)
            if any(new < old for new, old in zip(covered, block.covered, strict=True)):
                wanted.append(link)
        return wanted

    def _coverage(self, start: int, stop: int, firsts: tuple[int, ...]) -> tuple[int, ...]:
        """Per section, the first position of ``start:stop`` a state holds, which holds each
        section's positions from ``firsts[i]`` on."""
        return tuple(min(stop, max(start, first)) for first in firsts)

    def _make_block(
        self,
        link: tuple[bytes, bytes, int, int],
        tokens: list[int],
        cells: list[Cells],
        firsts: tuple[int, ...],
    ) -> Block:
        key, parent, start, stop = link
        covered = self._coverage(start, stop, firsts)
        size = sum(
            (stop - first) * section.cell_bytes
            for section, first in zip(self.layout.sections, covered, strict=True)
        )
        data = np.empty(size, dtype=np.uint8)
        offset = 0
        for section, section_cells, first in zip(self.layout.sections, cells, covered, strict=True):
            length = (stop - first) * section.cell_bytes
            if stop > first:
                base = int(section_cells.positions[0])
                section_cells.take(first - base, stop - base, data[offset : offset + length])
            offset += length
        return Block(key, parent, start, tuple(tokens[start:stop]), covered, data)

    def _read_state(
        self, seq: int, n_tokens: int, window: WindowCells | None
    ) -> list[Cells] | None:
        """Sequence ``seq``'s cells, section by section (the windowed one joined to
        ``window``'s earlier cells); ``None`` if they are not positions ``0..n_tokens-1``
        (less of a window where windowed) as the scheduler believes."""
        ctx = self.context.handle
        size = C.llama_state_seq_get_size(ctx, seq)
        if size > self._buffer.nbytes:
            self._buffer = np.empty(int(size * 1.25), dtype=np.uint8)
        pointer = self._buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        written = C.llama_state_seq_get_data(ctx, pointer, size, seq)
        if written != size:
            logger.warning("prompt cache: llama.cpp gave %d of %d state bytes", written, size)
            return None
        layout, cells = parse(self._buffer[:size], seq, self.layout.sections[0].n_stream)
        if layout != self.layout:
            raise StateFormatError("the layout changed")
        for index, (windowed, section_cells) in enumerate(zip(self._windowed, cells, strict=True)):
            first = max(0, n_tokens - self.n_swa) if windowed else 0
            expected = np.arange(first, n_tokens, dtype=np.int32)
            if not np.array_equal(section_cells.positions, expected):
                if (
                    windowed
                    and section_cells.positions.size
                    and section_cells.positions[-1] == (n_tokens - 1)
                ):
                    # Positions of the last token agree, the window does not: not the
                    # standard sliding window this cache knows how to cut.
                    raise StateFormatError("a sliding window of another kind")
                logger.warning(
                    "prompt cache: sequence %d holds positions %s..%s, not 0..%d; not saved",
                    seq,
                    section_cells.positions[:1].tolist(),
                    section_cells.positions[-1:].tolist(),
                    n_tokens - 1,
                )
                return None
            if windowed and window is not None:
                cells[index] = window.cells.join(section_cells)
        return cells

    # -- restoring ---------------------------------------------------------------------------------
    def restore(
        self,
        seq: int,
        prompt: list[int],
        limit: int,
        at_least: int,
        *,
        boundary: Callable[[int], int] | None = None,
    ) -> Restored | None:
        """Put the longest cached prefix of ``prompt[:limit]`` into sequence ``seq``, if it
        holds at least ``at_least`` tokens; what went in, or ``None`` (``seq`` untouched).
        ``boundary(n)``: the longest prefix of at most ``n`` tokens that may end a restore
        (not inside an image)."""
        if not self.enabled or limit < max(1, at_least):
            return None
        started = time.perf_counter()
        with self._lock:
            found = self._index.match(prompt, limit)
            length = self._usable(found)
            while boundary is not None and (cut := boundary(length)) < length:
                found = self._index.match(prompt, cut)
                length = self._usable(found) if cut else 0
        if length < max(1, at_least):
            with self._lock:
                self._counts.misses += 1
            return None
        restored = self._restore(seq, found, length, at_least)
        with self._lock:
            if restored is None:
                self._counts.misses += 1
            self._counts.restore_seconds += time.perf_counter() - started
        return restored

    def _usable(self, found: Match) -> int:
        """The longest length up to ``found.length`` whose windows the blocks hold."""
        if not any(self._windowed):
            return found.length
        candidates = sorted(
            {found.length, *(block.stop for block in found.blocks if block.stop < found.length)},
            reverse=True,
        )
        for length in candidates:
            if self._holds_windows(found.blocks, length):
                return length
        return 0

    def _holds_windows(self, blocks: list[Block], length: int) -> bool:
        first_needed = self.context.window_start(length)
        for index, windowed in enumerate(self._windowed):
            if not windowed:
                continue
            for block in blocks:
                if block.start >= length or block.stop <= first_needed:
                    continue
                if block.covered[index] > max(first_needed, block.start):
                    return False
        return True

    def _restore(self, seq: int, found: Match, length: int, at_least: int) -> Restored | None:
        blocks = [block for block in found.blocks if block.start < length]
        with self._lock:  # the bytes as they are now: clear() may run on another thread
            held = [block.data for block in blocks]
        from_disk = [False] * len(blocks)
        reading = time.perf_counter()
        for index, block in enumerate(blocks):
            if held[index] is not None:
                continue
            data = self.disk.read(block) if self.disk is not None else None
            with self._lock:
                if data is None:
                    self._index.off_disk(block)
                else:
                    self._index.load(block, data)
            if data is None:
                # Its file is gone or bad: restore what comes before it, if that is enough.
                length = self._usable(Match(blocks[:index], block.start))
                if length < max(1, at_least):
                    return None
                kept = sum(1 for earlier in blocks[:index] if earlier.start < length)
                del blocks[kept:], held[kept:], from_disk[kept:]
                break
            held[index], from_disk[index] = data, True
        used = [min(block.stop, length) - block.start for block in blocks]
        disk_tokens = sum(n for n, disk in zip(used, from_disk, strict=True) if disk)
        memory_tokens = length - disk_tokens
        disk_bytes_read = sum(
            int(data.nbytes)
            for data, disk in zip(held, from_disk, strict=True)
            if disk and data is not None
        )
        assembling = time.perf_counter()
        parts = self._parts(blocks, [data for data in held if data is not None], length)
        counts = [sum(part.stop - part.start for part in section) for section in parts]
        size = state_size(self.layout, counts)
        if size > self._buffer.nbytes:
            self._buffer = np.empty(int(size * 1.25), dtype=np.uint8)
        assemble(self.layout, seq, parts, self._buffer)
        setting = time.perf_counter()
        pointer = self._buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        read = C.llama_state_seq_set_data(self.context.handle, pointer, size, seq)
        done = time.perf_counter()
        with self._lock:
            self._counts.read_seconds += assembling - reading
            self._counts.assemble_seconds += setting - assembling
            self._counts.set_seconds += done - setting
        if read != size or self.context.last_position(seq) != length - 1:
            logger.warning("prompt cache: llama.cpp did not take a state of %d tokens", length)
            self.context.forget(seq, 0)
            return None
        with self._lock:
            self._index.touch(blocks)
            self._index.evict(self.settings.memory_bytes)
            counts_ = self._counts
            if memory_tokens:
                counts_.memory.hits += 1
                counts_.memory.tokens += memory_tokens
            if disk_tokens:
                counts_.disk.hits += 1
                counts_.disk.tokens += disk_tokens
                counts_.disk.bytes_read += disk_bytes_read
        if self.disk is not None:
            self.disk.touch(blocks)
        window_floor = self.context.window_start(length) if any(self._windowed) else 0
        return Restored(length, memory_tokens, disk_tokens, window_floor)

    def _parts(self, blocks: list[Block], held: list[np.ndarray], length: int) -> list[list[Part]]:
        """Each section's cells of positions ``0..length-1``, out of the blocks' bytes
        ``held``.  A windowed section gets its window's cells and, before them, zeros: cells
        its window masks, but which put every cell where computing the prefix would have
        (llama.cpp's attention over fewer cells rounds differently: a restore would not give
        the answer the kept state gives)."""
        parts: list[list[Part]] = []
        for index, windowed in enumerate(self._windowed):
            first = self.context.window_start(length) if windowed else 0
            section = [Part.zeros(first)] if first else []
            for block, data in zip(blocks, held, strict=True):
                start, stop = max(first, block.start), min(length, block.stop)
                if start < stop:
                    section.append(block.part(data, self.layout, index, start, stop))
            parts.append(section)
        return parts

    # -- the disk tier's index -----------------------------------------------------------------
    def _written(self, block: Block, size: int, covered: tuple[int, ...]) -> None:
        with self._lock:
            current = self._index.blocks.get(block.key)
            if current is not None:
                self._index.on_disk(current, size, covered)

    def _removed(self, key: bytes) -> None:
        with self._lock:
            block = self._index.blocks.get(key)
            if block is not None:
                self._index.off_disk(block)

    # -- control ---------------------------------------------------------------------------------
    def _disable(self, why: str) -> None:
        self.enabled = False
        logger.warning("prompt cache off for this model: %s", why)
        with self._lock:
            self._index.clear_memory()

    def clear(self, memory: bool = True, disk: bool = True) -> dict[str, int]:
        """Empty a tier or both; how many blocks each had."""
        with self._lock:
            in_memory = sum(1 for block in self._index if block.data is not None)
            on_disk = [block for block in self._index if block.disk_bytes]
            if memory:
                self._index.clear_memory()
            if disk and self.disk is not None:
                for block in on_disk:
                    self._index.off_disk(block)
                self.disk.remove_all()
        return {
            "memory_blocks": in_memory if memory else 0,
            "disk_blocks": len(on_disk) if disk else 0,
        }

    def stats(self) -> dict[str, Any]:
        """Both tiers: size, budget, blocks, hits, tokens and bytes."""
        with self._lock:
            blocks = list(self._index)
            counts = self._counts
            memory_blocks = [block for block in blocks if block.data is not None]
            disk_blocks = [block for block in blocks if block.disk_bytes]
            result: dict[str, Any] = {
                "enabled": self.enabled,
                "block_tokens": BLOCK_TOKENS,
                "saves": counts.saves,
                "misses": counts.misses,
                "restore_seconds": round(counts.restore_seconds, 6),
                "restore_read_seconds": round(counts.read_seconds, 6),
                "restore_assemble_seconds": round(counts.assemble_seconds, 6),
                "restore_set_seconds": round(counts.set_seconds, 6),
                "save_seconds": round(counts.save_seconds, 6),
                "memory": {
                    "bytes": self._index.memory_bytes,
                    "budget_bytes": self.settings.memory_bytes,
                    "blocks": len(memory_blocks),
                    "tokens": sum(len(block.tokens) for block in memory_blocks),
                    "hits": counts.memory.hits,
                    "hit_tokens": counts.memory.tokens,
                },
            }
            if self.disk is not None:
                result["disk"] = {
                    "bytes": self._index.disk_bytes,
                    "budget_bytes": self.settings.disk_bytes,
                    "blocks": len(disk_blocks),
                    "tokens": sum(len(block.tokens) for block in disk_blocks),
                    "hits": counts.disk.hits,
                    "hit_tokens": counts.disk.tokens,
                    "bytes_read": counts.disk.bytes_read,
                    "writes": self.disk.writes,
                    "write_errors": self.disk.write_errors,
                    "writable": self.disk.writable,
                    "removed_bad": self.disk.removed_bad,
                    "folder": str(self.disk.folder),
                }
            else:
                result["disk"] = None
        return result

    def flush(self, timeout: float = CLOSE_WRITE_TIMEOUT) -> bool:
        """Wait for the disk writes asked for so far."""
        return self.disk.flush(timeout) if self.disk is not None else True

    def close(self) -> None:
        """Finish the disk writes in flight, then stop."""
        if self.disk is not None:
            self.disk.close(CLOSE_WRITE_TIMEOUT)


def probe_layout(context: LlamaContext, seq: int = 0) -> Layout:
    """The layout of ``context``'s sequence states, from a one-token state of ``seq``
    (decoded, read and forgotten); :class:`StateFormatError` if it is not one this cache
    reads.  Decodes: run it where decoding is allowed (see ``in_passing_thread``)."""
    context.clear_batch()
    context.add(context.model.bos_id if context.model.bos_id >= 0 else 0, 0, seq, False)
    if context.decode() != 0:
        raise StateFormatError("the probe's decode failed")
    try:
        handle = context.handle
        size = C.llama_state_seq_get_size(handle, seq)
        buffer = np.empty(size, dtype=np.uint8)
        pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        if C.llama_state_seq_get_data(handle, pointer, size, seq) != size:
            raise StateFormatError("llama.cpp gave a short state")
        layout, _ = parse(buffer, seq, _streams(buffer))
        return layout
    finally:
        context.forget(seq, 0)


def _streams(buffer: np.ndarray) -> int:
    """The stream count a state says it has (after its 8-byte head)."""
    return int(buffer[8:12].view("<u4")[0]) if buffer.nbytes >= 12 else 0
