"""llama.cpp's state of one sequence, cut into token ranges and put together again.

``llama_state_seq_get_data`` gives a sequence's KV cells as one buffer; ``_set_data`` puts
such a buffer back into any sequence.  The prompt cache keeps states in blocks of tokens,
shared by every prompt that starts with them, so it needs the buffer's layout, which is
llama.cpp's (``llama_context::state_seq_get_data``, ``llama_kv_cache::state_write`` in the
llama.cpp that llama-cpp-python 0.3.36 vendors):

- ``u32`` magic ``0xAF143CD8``, ``i32`` the sequence id;
- one *section* per KV cache (one; two for a model with sliding-window layers, the full
  cache first and the windowed one second): ``u32`` the number of streams, then per stream
  ``u32`` its cell count and, for the stream that holds the sequence,
  - a record per cell: ``i32`` position, ``u32`` 1, [the cell's extension], ``i32`` sequence;
  - ``u32`` V transposed, ``u32`` layers; per layer ``i32`` K type, ``u64`` K row size and
    a K row per cell; per layer the same for V, or, transposed, ``i32`` type, ``u32``
    element size, ``u32`` width and, for each of the width's elements, one per cell.

Every row belongs to one cell, so the rows of any range of positions can be taken out and
put back.  A windowed cache writes only the cells still inside the window of the sequence's
last position.  :func:`parse` checks every size against the buffer and raises
:class:`StateFormatError` on anything else (a recurrent or hybrid model's memory), and the
cache is then off for that model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = 0xAF143CD8
_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<Ii")  # magic, sequence id
_RECORD = struct.Struct("<iIi")  # position, 1, sequence id (without the cell's extension)
_K_HEADER = struct.Struct("<iQ")  # type, row size
_V_T_HEADER = struct.Struct("<iII")  # type, element size, width


class StateFormatError(ValueError):
    """A sequence state this module cannot read: the prompt cache is off for that model."""


@dataclass(frozen=True)
class Tensor:
    """One layer's K or V tensor as a section stores it: a row of ``row_bytes`` per cell, or,
    ``transposed``, ``width`` elements per cell kept element by element."""

    header: bytes  # as llama.cpp writes it before the rows
    row_bytes: int
    transposed: bool = False
    width: int = 0  # elements per cell, when transposed

    def view(self, data: np.ndarray, cells: int) -> np.ndarray:
        """``data`` (``cells * row_bytes`` bytes) as an array whose axis 1 is the cells when
        transposed, else axis 0."""
        if self.transposed:
            return data.reshape(self.width, cells, self.row_bytes // self.width)
        return data.reshape(cells, self.row_bytes)


@dataclass(frozen=True)
class Section:
    """The shape of one KV cache's part of a state: everything but the cells."""

    n_stream: int
    record_bytes: int  # one cell's record
    v_trans: int
    tensors: tuple[Tensor, ...]  # every layer's K, then every layer's V

    @property
    def cell_bytes(self) -> int:
        """What one cell of this section takes: its record and its rows."""
        return self.record_bytes + sum(tensor.row_bytes for tensor in self.tensors)


@dataclass(frozen=True)
class Layout:
    """The shape of a context's sequence states: the same for every sequence and length."""

    sections: tuple[Section, ...]

    def describe(self) -> str:
        """A stable text of the layout, for the disk tier's key."""
        parts = []
        for section in self.sections:
            tensors = ",".join(
                f"{t.header.hex()}:{t.row_bytes}:{int(t.transposed)}" for t in section.tensors
            )
            parts.append(f"{section.n_stream}/{section.record_bytes}/{section.v_trans}/{tensors}")
        return ";".join(parts)


@dataclass
class Cells:
    """One section's cells of a parsed state, in position order."""

    positions: np.ndarray  # int32, ascending
    records: np.ndarray  # (cells, record_bytes)
    rows: list[np.ndarray]  # per tensor, as Tensor.view gives them

    def join(self, later: Cells) -> Cells:
        """These cells up to where ``later``'s begin, then ``later``'s (copies)."""
        keep = (
            int(np.searchsorted(self.positions, later.positions[0])) if later.positions.size else 0
        )
        rows = [
            np.concatenate((mine[:, :keep], theirs), axis=1)
            if mine.ndim == 3
            else np.concatenate((mine[:keep], theirs))
            for mine, theirs in zip(self.rows, later.rows, strict=True)
        ]
        return Cells(
            np.concatenate((self.positions[:keep], later.positions)),
            np.concatenate((self.records[:keep], later.records)),
            rows,
        )

    def take(self, start: int, stop: int, out: np.ndarray) -> None:
        """Copy cells ``start:stop`` into ``out`` (a block's bytes for this section):
        records first, then each tensor's rows, as :func:`unpack` reads them."""
        count = stop - start
        offset = 0
        size = count * self.records.shape[1]
        out[offset : offset + size].reshape(count, -1)[:] = self.records[start:stop]
        offset += size
        for rows in self.rows:
            if rows.ndim == 3:  # transposed
                size = count * rows.shape[0] * rows.shape[2]
                target = out[offset : offset + size].reshape(rows.shape[0], count, rows.shape[2])
                target[:] = rows[:, start:stop]
            else:
                size = count * rows.shape[1]
                out[offset : offset + size].reshape(count, -1)[:] = rows[start:stop]
            offset += size


def _read(fmt: struct.Struct, buffer: memoryview, offset: int) -> tuple[tuple[int, ...], int]:
    end = offset + fmt.size
    if end > len(buffer):
        raise StateFormatError("the state ends early")
    return fmt.unpack_from(buffer, offset), end


def parse(buffer: np.ndarray, seq: int, n_stream: int) -> tuple[Layout, list[Cells]]:
    """The layout of a state of sequence ``seq`` and its cells, section by section (views
    into ``buffer`` where the cells are in position order, copies otherwise)."""
    raw = memoryview(buffer).cast("B")
    (magic, seq_read), offset = _read(_HEAD, raw, 0)
    if magic != MAGIC or seq_read != seq:
        raise StateFormatError("not a sequence state of this llama.cpp")
    sections: list[Section] = []
    cells: list[Cells] = []
    while offset < len(raw):
        section, section_cells, offset = _parse_section(buffer, raw, offset, seq, n_stream)
        sections.append(section)
        cells.append(section_cells)
    if not sections:
        raise StateFormatError("the state holds no KV cache")
    return Layout(tuple(sections)), cells


def _parse_section(
    buffer: np.ndarray, raw: memoryview, offset: int, seq: int, n_stream: int
) -> tuple[Section, Cells, int]:
    (streams,), offset = _read(_U32, raw, offset)
    if streams != n_stream:
        raise StateFormatError(f"{streams} streams, not {n_stream}")
    found: tuple[Section, Cells] | None = None
    for _ in range(streams):
        (count,), offset = _read(_U32, raw, offset)
        if count == 0:
            continue
        if found is not None:
            raise StateFormatError("one sequence in two streams")
        found, offset = _parse_cells(buffer, raw, offset, count, seq, n_stream)
    if found is None:
        raise StateFormatError("an empty sequence has no layout")
    return found[0], found[1], offset


def _parse_cells(
    buffer: np.ndarray, raw: memoryview, offset: int, count: int, seq: int, n_stream: int
) -> tuple[tuple[Section, Cells], int]:
    # A cell's record is position, 1, [extension], sequence: find the extension's size from
    # where the first record's sequence id sits.
    record_bytes = 0
    for extension in (0, 12):
        size = _RECORD.size + extension
        if offset + size <= len(raw):
            _, n_seq, *_ = struct.unpack_from("<iI", raw, offset)
            (seq_read,) = struct.unpack_from("<i", raw, offset + size - 4)
            if n_seq == 1 and seq_read == seq:
                record_bytes = size
                break
    if not record_bytes:
        raise StateFormatError("cell records of an unknown form")
    end = offset + count * record_bytes
    if end > len(raw):
        raise StateFormatError("the state ends early")
    records = buffer[offset:end].reshape(count, record_bytes)
    positions = records[:, :4].copy().view("<i4").reshape(count)
    offset = end
    (v_trans, n_layer), offset = _read(struct.Struct("<II"), raw, offset)
    if v_trans not in (0, 1) or not 0 < n_layer < 4096:
        raise StateFormatError("a section header of an unknown form")
    tensors: list[Tensor] = []
    rows: list[np.ndarray] = []

    def take_rows(tensor: Tensor, at: int) -> int:
        stop = at + count * tensor.row_bytes
        if stop > len(raw):
            raise StateFormatError("the state ends early")
        tensors.append(tensor)
        rows.append(tensor.view(buffer[at:stop], count))
        return stop

    for _ in range(n_layer):
        header_start = offset
        (_, row_bytes), offset = _read(_K_HEADER, raw, offset)
        offset = take_rows(Tensor(bytes(raw[header_start:offset]), row_bytes), offset)
    for _ in range(n_layer):
        header_start = offset
        if v_trans:
            (_, element, width), offset = _read(_V_T_HEADER, raw, offset)
            if element == 0 or width == 0:
                raise StateFormatError("a transposed V of no size")
            tensor = Tensor(bytes(raw[header_start:offset]), element * width, True, width)
        else:
            (_, row_bytes), offset = _read(_K_HEADER, raw, offset)
            tensor = Tensor(bytes(raw[header_start:offset]), row_bytes)
        offset = take_rows(tensor, offset)
    section = Section(n_stream, record_bytes, v_trans, tuple(tensors))
    order = np.argsort(positions, kind="stable")
    if np.any(order != np.arange(count)):
        # Cells out of position order (a stream reused after a cut): copy them into order.
        records = records[order]
        rows = [r[:, order] if r.ndim == 3 else r[order] for r in rows]
        positions = positions[order]
    return (section, Cells(positions, records, rows)), offset


@dataclass(frozen=True)
class Part:
    """Cells ``start:stop`` of one block's bytes for one section (which hold ``cells``); or,
    ``data`` ``None``, that many cells of zeros at positions ``start:stop``."""

    data: np.ndarray | None
    cells: int
    start: int
    stop: int

    @classmethod
    def zeros(cls, count: int) -> Part:
        """Cells of zeros at positions ``0:count`` (which a sliding window masks)."""
        return cls(None, count, 0, count)


def state_size(layout: Layout, counts: list[int]) -> int:
    """Bytes of a state with ``counts[i]`` cells in section ``i``."""
    size = _HEAD.size
    for section, count in zip(layout.sections, counts, strict=True):
        size += _U32.size * (1 + section.n_stream)
        if count:
            size += 8 + count * section.cell_bytes
            size += sum(len(tensor.header) for tensor in section.tensors)
    return size


def assemble(layout: Layout, seq: int, parts: list[list[Part]], out: np.ndarray) -> int:
    """Write into ``out`` a state of sequence ``seq`` whose section ``i`` holds the cells of
    ``parts[i]``, in order; returns its size.  ``out`` must hold :func:`state_size` bytes."""
    raw = memoryview(out).cast("B")
    _HEAD.pack_into(raw, 0, MAGIC, seq)
    offset = _HEAD.size
    for section, section_parts in zip(layout.sections, parts, strict=True):
        count = sum(part.stop - part.start for part in section_parts)
        _U32.pack_into(raw, offset, section.n_stream)
        offset += 4
        # llama.cpp reads the cells into the target sequence's own stream whichever stream
        # they are listed under; list them under the one it would write them from.
        own = seq if seq < section.n_stream else 0
        for stream in range(section.n_stream):
            _U32.pack_into(raw, offset, count if stream == own else 0)
            offset += 4
            if stream == own and count:
                offset = _assemble_cells(section, section_parts, count, out, raw, offset)
    return offset


def _assemble_cells(
    section: Section, parts: list[Part], count: int, out: np.ndarray, raw: memoryview, offset: int
) -> int:
    # Where each part's records and tensors start inside its block's bytes.
    sources = [(part, _offsets(section, part.cells)) for part in parts]
    size = count * section.record_bytes
    target = out[offset : offset + size].reshape(count, section.record_bytes)
    at = 0
    for part, offsets in sources:
        n = part.stop - part.start
        if part.data is None:
            target[at : at + n] = 0
            record = target[at : at + n, : _RECORD.size].view("<i4")  # position, 1, sequence
            record[:, 0] = np.arange(part.start, part.stop, dtype="<i4")
            record[:, 1] = 1
        else:
            records = part.data[offsets[0] : offsets[0] + part.cells * section.record_bytes]
            target[at : at + n] = records.reshape(part.cells, -1)[part.start : part.stop]
        at += n
    offset += size
    n_layer = len(section.tensors) // 2
    for index, tensor in enumerate(section.tensors):
        if index == 0:
            struct.pack_into("<II", raw, offset, section.v_trans, n_layer)
            offset += 8
        raw[offset : offset + len(tensor.header)] = tensor.header
        offset += len(tensor.header)
        size = count * tensor.row_bytes
        target = tensor.view(out[offset : offset + size], count)
        at = 0
        for part, offsets in sources:
            n = part.stop - part.start
            if part.data is None:
                rows = target[:, at : at + n] if tensor.transposed else target[at : at + n]
                rows[:] = 0
            else:
                start = offsets[index + 1]
                data = part.data[start : start + part.cells * tensor.row_bytes]
                source = tensor.view(data, part.cells)
                if tensor.transposed:
                    target[:, at : at + n] = source[:, part.start : part.stop]
                else:
                    target[at : at + n] = source[part.start : part.stop]
            at += n
        offset += size
    return offset


def _offsets(section: Section, cells: int) -> list[int]:
    """Where a block of ``cells`` cells keeps, for ``section``, its records and each tensor."""
    offsets = [0]
    at = cells * section.record_bytes
    for tensor in section.tensors:
        offsets.append(at)
        at += cells * tensor.row_bytes
    return offsets
