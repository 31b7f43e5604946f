"""The prompt cache's pieces on their own: llama.cpp's state format read and written back,
the block index, and the disk tier's files (unit tests of logic; the real server's prompt
cache is tested in test_prompt_cache.py)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lmserve.engine.prompt_cache.blocks import BLOCK_TOKENS, ROOT, Block, BlockIndex, block_key
from lmserve.engine.prompt_cache.disk import DiskTier, clear_folders, list_folders
from lmserve.engine.prompt_cache.state import Part, assemble, parse, state_size


@pytest.fixture(scope="module")
def real_state(default_model_file: Path) -> tuple[np.ndarray, int]:
    """A real sequence state of the default model: 300 prompt tokens in sequence 1 of a
    two-sequence context."""
    import ctypes

    import llama_cpp as C

    from lmserve.engine.llama import ContextConfig, LlamaContext, LlamaModel, in_passing_thread

    model = LlamaModel(default_model_file)
    context = LlamaContext(model, ContextConfig(n_slots=2, n_ctx_per_slot=1024))
    tokens = model.tokenize("The harbour opens at six. " * 60, add_special=True)[:300]

    def decode() -> None:
        context.clear_batch()
        for position, token in enumerate(tokens):
            context.add(token, position, 1, False)
        assert context.decode() == 0

    in_passing_thread(decode)
    size = C.llama_state_seq_get_size(context.handle, 1)
    buffer = np.empty(size, dtype=np.uint8)
    pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    assert C.llama_state_seq_get_data(context.handle, pointer, size, 1) == size
    context.close()
    model.close()
    return buffer, len(tokens)


def test_a_state_cut_into_blocks_and_put_together_again_is_the_same_bytes(
    real_state: tuple[np.ndarray, int],
) -> None:
    buffer, n_tokens = real_state
    layout, cells = parse(buffer, 1, 2)
    assert len(layout.sections) == 1 and cells[0].positions.tolist() == list(range(n_tokens))
    section = layout.sections[0]
    # Three blocks of unequal sizes, each holding its cells as the cache keeps them.
    bounds = [(0, 128), (128, 256), (256, n_tokens)]
    blocks = []
    for start, stop in bounds:
        data = np.empty((stop - start) * section.cell_bytes, dtype=np.uint8)
        cells[0].take(start, stop, data)
        blocks.append((data, stop - start))
    parts = [[Part(data, count, 0, count) for data, count in blocks]]
    out = np.empty(state_size(layout, [n_tokens]), dtype=np.uint8)
    size = assemble(layout, 1, parts, out)
    assert size == buffer.nbytes
    assert np.array_equal(out, buffer)
    # A prefix of it is the state llama.cpp would write for the first 200 positions: same
    # head, 200 cells, each tensor's first 200 rows.
    prefix = [[Part(blocks[0][0], 128, 0, 128), Part(blocks[1][0], 128, 0, 72)]]
    short = np.empty(state_size(layout, [200]), dtype=np.uint8)
    assemble(layout, 1, prefix, short)
    _, short_cells = parse(short, 1, 2)
    assert short_cells[0].positions.tolist() == list(range(200))
    for full_rows, short_rows in zip(cells[0].rows, short_cells[0].rows, strict=True):
        assert np.array_equal(full_rows[:200], short_rows)


def _block(tokens: list[int], start: int, parent: bytes, size: int = 10) -> Block:
    """A block of one section holding ``size`` bytes."""
    data = np.zeros(size, dtype=np.uint8)
    return Block(block_key(parent, tokens), parent, start, tuple(tokens), (start,), data)


def test_the_index_finds_the_longest_prefix_through_whole_blocks_and_into_a_part_of_one() -> None:
    index = BlockIndex()
    first = list(range(BLOCK_TOKENS))
    head = _block(first, 0, ROOT)
    index.add(head)
    tail = _block([7, 8, 9, 10], BLOCK_TOKENS, head.key)
    index.add(tail)
    found = index.match([*first, 7, 8, 99, 100], limit=BLOCK_TOKENS + 4)
    assert found.blocks == [head, tail] and found.length == BLOCK_TOKENS + 2
    # A longer tail under the same parent makes the shorter one needless.
    longer = _block([7, 8, 9, 10, 11], BLOCK_TOKENS, head.key)
    assert index.add(longer) == [tail]
    assert index.match([*first, 7, 8, 9, 10, 11, 12], limit=BLOCK_TOKENS + 6).length == (
        BLOCK_TOKENS + 5
    )
    # Another first block: no match at all.
    assert index.match([1, *first], limit=BLOCK_TOKENS).length == 0


def test_memory_eviction_takes_the_least_recently_used_leaf_first() -> None:
    index = BlockIndex()
    a = _block(list(range(BLOCK_TOKENS)), 0, ROOT)
    b = _block([1, 2, 3], BLOCK_TOKENS, a.key)
    c = _block([4, 5, 6], BLOCK_TOKENS, a.key)
    for block in (a, b, c):
        index.add(block)
    index.touch([a, b])
    index.touch([a, c])
    # c was used last, but its parent a after it: b goes first, then c, a last.
    evicted = index.evict(index.memory_bytes - 10)
    assert evicted == [b]
    assert index.evict(0) == [c, a]
    assert len(index) == 0 and index.memory_bytes == 0


def _disk(folder: Path, state: str = "k" * 32, budget: int = 1 << 30) -> DiskTier:
    return DiskTier(folder, state, {"model": "test"}, budget, lambda *a: None, lambda key: None)


def test_block_files_round_trip_and_bad_ones_are_removed_not_read(tmp_path: Path) -> None:
    blocks = [_block(list(range(i, i + 5)), 0, ROOT, size=1000 + i) for i in range(0, 25, 5)]
    for block in blocks:
        assert block.data is not None
        block.data[:] = np.arange(block.data.size) % 251
    disk = _disk(tmp_path)
    disk.write(blocks)
    assert disk.flush(10)
    assert len(disk.scan()) == 5 and disk.writes == 5
    read = disk.read(blocks[0])
    assert read is not None and np.array_equal(read, blocks[0].data)
    # Truncated, flipped, foreign (another state key) and not a block file at all.
    files = [disk.path(block.key) for block in blocks]
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-40])
    flipped = bytearray(files[2].read_bytes())
    flipped[-100] ^= 0xFF
    files[2].write_bytes(bytes(flipped))
    foreign = _disk(tmp_path, "f" * 32)
    foreign.write([blocks[3]])
    assert foreign.flush(10)
    files[3].write_bytes(foreign.path(blocks[3].key).read_bytes())
    files[4].write_bytes(b"not a block at all")
    for block in blocks[1:3]:
        assert disk.read(block) is None
    assert {header.key for header, _ in disk.scan()} == {blocks[0].key}
    assert not any(path.exists() for path in files[1:])
    assert disk.removed_bad == 4
    disk.close(5)
    foreign.close(5)


def test_a_full_disk_stops_the_writes_with_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from lmserve.engine.prompt_cache import disk as disk_module

    def no_space(path: Path, *chunks: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_module, "_write_atomically", no_space)
    disk = _disk(tmp_path)
    for i in range(3):
        disk.write([_block([i, i + 1], 0, ROOT)])
        disk.flush(10)
    assert not disk.writable and disk.write_errors == 1
    assert sum("writes no more" in record.message for record in caplog.records) == 1
    disk.close(5)


def test_two_writers_of_one_folder_leave_only_whole_files(tmp_path: Path) -> None:
    """Two servers sharing a home write the same blocks under the same names."""
    blocks = [_block([i] * 8, 0, ROOT, size=200_000) for i in range(12)]
    writers = [_disk(tmp_path), _disk(tmp_path)]
    threads = [threading.Thread(target=w.write, args=(blocks,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer in writers:
        assert writer.flush(30)
    reader = _disk(tmp_path)
    assert len(reader.scan()) == 12 and reader.removed_bad == 0
    for block in blocks:
        assert np.array_equal(reader.read(block), block.data)
    assert not list(tmp_path.rglob("*.tmp"))
    for writer in (*writers, reader):
        writer.close(5)


def test_the_disk_budget_removes_the_least_recently_used_files_of_every_model(
    tmp_path: Path,
) -> None:
    other = _disk(tmp_path, "o" * 32)
    old = [_block([i] * 4, 0, ROOT, size=100_000) for i in range(3)]
    other.write(old)
    assert other.flush(10)
    for block in old:  # used an hour ago (file times are too coarse to order writes)
        stamp = time.time() - 3600
        os.utime(other.path(block.key), (stamp, stamp))
    disk = _disk(tmp_path, budget=450_000)
    new = [_block([i] * 4, 0, ROOT, size=100_000) for i in range(10, 13)]
    disk.write(new)
    assert disk.flush(10)
    listing = {folder["key"]: folder for folder in list_folders(tmp_path)}
    assert sum(folder["bytes"] for folder in listing.values()) <= 450_000
    assert listing["k" * 32]["blocks"] == 3  # the newest files stay
    assert listing["o" * 32]["blocks"] == 1
    assert clear_folders(tmp_path) == 4
    for writer in (other, disk):
        writer.close(5)
