"""The prompt cache's blocks and their index: which token prefixes have states, and where.

A cached state is cut into blocks of :data:`BLOCK_TOKENS` tokens.  A block is named by a
hash of its tokens and of its parent's name, so a block stands for one whole prefix: every
prompt that starts with the same tokens (one system prompt under many conversations) finds
the same blocks, and each is stored once.  The last block of a state may be shorter (a
*tail*); a prompt may use any first part of any block.

A block holds, for each section of the state (:mod:`.state`), the cells of its positions
from ``covered[i]`` on: all of them for a full KV cache; for a sliding-window cache, those
that were still in the window when the block was saved.

The index keeps the blocks of both tiers: a block's bytes may be in memory (``data``), in a
file (``disk_bytes``), or both.  In memory, blocks are evicted least recently used first,
by bytes; a block is always touched after its descendants, so the one evicted first has no
children left in memory.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lmserve.engine.prompt_cache.state import Layout, Part
from lmserve.engine.tokens import common_prefix_length

BLOCK_TOKENS = 256
ROOT = bytes(16)  # the parent of a state's first block


def block_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The name of the block holding ``tokens`` after the prefix named ``parent``."""
    return hashlib.blake2b(parent + array("i", tokens).tobytes(), digest_size=16).digest()


@dataclass(eq=False)
class Block:
    """The cells of ``tokens``, at positions ``start`` on, after the prefix ``parent``."""

    key: bytes
    parent: bytes
    start: int
    tokens: tuple[int, ...]
    covered: tuple[int, ...]  # per section, the first position it holds cells of
    data: np.ndarray | None = None  # in memory: each section's cells, one section after another
    disk_bytes: int = 0  # on disk: the file's size (0: not on disk)
    written: tuple[int, ...] = ()  # the coverage the file holds

    @property
    def stop(self) -> int:
        return self.start + len(self.tokens)

    @property
    def memory_bytes(self) -> int:
        return 0 if self.data is None else int(self.data.nbytes)

    def size(self, layout: Layout) -> int:
        """Bytes of this block's cells."""
        return sum(
            (self.stop - first) * section.cell_bytes
            for section, first in zip(layout.sections, self.covered, strict=True)
        )

    def part(self, data: np.ndarray, layout: Layout, section: int, start: int, stop: int) -> Part:
        """Positions ``start:stop`` of one section, which this block must cover, out of its
        bytes ``data`` (its ``data`` when it was read: another thread may evict it since)."""
        assert self.covered[section] <= start and stop <= self.stop
        offset = 0
        for index, sec in enumerate(layout.sections):
            cells = self.stop - self.covered[index]
            if index == section:
                first = self.covered[index]
                section_data = data[offset : offset + cells * sec.cell_bytes]
                return Part(section_data, cells, start - first, stop - first)
            offset += cells * sec.cell_bytes
        raise IndexError(section)


@dataclass
class Match:
    """The blocks a prompt's longest cached prefix runs through; ``length`` tokens in all
    (the last block may be used in part)."""

    blocks: list[Block] = field(default_factory=list)
    length: int = 0


class BlockIndex:
    """Every block of one model's cache, and the memory tier's order of use."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, Block] = {}
        self.children: dict[bytes, dict[bytes, Block]] = {}
        self._memory: OrderedDict[bytes, None] = OrderedDict()
        self.memory_bytes = 0
        self.disk_bytes = 0

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[Block]:
        return iter(list(self.blocks.values()))

    def match(self, prompt: Sequence[int], limit: int) -> Match:
        """The longest prefix of ``prompt[:limit]`` that blocks hold."""
        found = Match()
        parent, position = ROOT, 0
        while position < limit:
            end = position + BLOCK_TOKENS
            if end <= limit:
                block = self.blocks.get(block_key(parent, prompt[position:end]))
                if block is not None and block.start == position:
                    found.blocks.append(block)
                    parent, position = block.key, end
                    continue
            # The rest is in no whole block: the sibling that shares most with it, if any.
            best, shared = None, 0
            rest = tuple(prompt[position:limit])  # a block's tokens are a tuple
            for child in self.children.get(parent, {}).values():
                length = common_prefix_length(child.tokens, rest)
                if length > shared:
                    best, shared = child, length
            if best is not None:
                found.blocks.append(best)
                position += shared
            break
        found.length = position
        return found

    def chain(self, tokens: Sequence[int]) -> list[tuple[bytes, bytes, int, int]]:
        """(key, parent, start, stop) of the blocks ``tokens`` would be stored in."""
        links = []
        parent = ROOT
        for start in range(0, len(tokens), BLOCK_TOKENS):
            stop = min(len(tokens), start + BLOCK_TOKENS)
            key = block_key(parent, tokens[start:stop])
            links.append((key, parent, start, stop))
            parent = key
        return links

    def add(self, block: Block) -> list[Block]:
        """Index ``block`` (or a better copy of one already there); returns the tails it makes
        needless (a shorter block under the same parent whose tokens start it), dropped."""
        old = self.blocks.get(block.key)
        if old is not None:
            self._forget_memory(old)
            block.disk_bytes, block.written = old.disk_bytes, old.written
        self.blocks[block.key] = block
        self.children.setdefault(block.parent, {})[block.key] = block
        if block.data is not None:
            self._memory[block.key] = None
            self.memory_bytes += block.memory_bytes
        dropped = []
        for sibling in list(self.children.get(block.parent, {}).values()):
            if (
                sibling is not block
                and len(sibling.tokens) < len(block.tokens)
                and block.tokens[: len(sibling.tokens)] == sibling.tokens
                and not self.children.get(sibling.key)
            ):
                self.drop(sibling)
                dropped.append(sibling)
        return dropped

    def load(self, block: Block, data: np.ndarray) -> None:
        """Bring a block read from disk into memory."""
        if block.data is None:
            block.data = data
            self._memory[block.key] = None
            self.memory_bytes += block.memory_bytes

    def touch(self, blocks: list[Block]) -> None:
        """Mark ``blocks`` (a chain from the root) used: descendants first, so that a parent
        is always used more recently than its children."""
        for block in reversed(blocks):
            if block.key in self._memory:
                self._memory.move_to_end(block.key)

    def evict(self, budget: int) -> list[Block]:
        """Drop the least recently used blocks from memory until they take ``budget`` bytes
        at most; returns them (those on disk stay indexed)."""
        evicted = []
        while self.memory_bytes > budget and self._memory:
            key = next(iter(self._memory))
            block = self.blocks[key]
            self._forget_memory(block)
            if not block.disk_bytes:
                self.drop(block)
            evicted.append(block)
        return evicted

    def on_disk(self, block: Block, size: int, covered: tuple[int, ...]) -> None:
        """``block`` was written to a file of ``size`` bytes (replacing any earlier file)."""
        self.disk_bytes += size - block.disk_bytes
        block.disk_bytes, block.written = size, covered

    def off_disk(self, block: Block) -> None:
        """``block``'s file is gone (evicted, removed, or found bad)."""
        self.disk_bytes -= block.disk_bytes
        block.disk_bytes, block.written = 0, ()
        if block.data is None:
            self.drop(block)

    def drop(self, block: Block) -> None:
        """Forget ``block`` altogether."""
        self._forget_memory(block)
        self.disk_bytes -= block.disk_bytes
        block.disk_bytes = 0
        if self.blocks.get(block.key) is block:
            del self.blocks[block.key]
            siblings = self.children.get(block.parent)
            if siblings is not None:
                siblings.pop(block.key, None)
                if not siblings:
                    del self.children[block.parent]

    def clear_memory(self) -> None:
        for block in list(self.blocks.values()):
            self._forget_memory(block)
            if not block.disk_bytes:
                self.drop(block)

    def _forget_memory(self, block: Block) -> None:
        if block.data is not None:
            self.memory_bytes -= block.memory_bytes
            block.data = None
        self._memory.pop(block.key, None)
