"""Read a GGUF file's header (metadata and tensor table) without loading its weights.

The format is documented in ggml's ``docs/gguf.md``: a magic, a version, the tensor and
key/value counts, the key/value pairs, then one record per tensor.  Only the header is read,
so describing a multi-gigabyte model costs a few milliseconds.  Large arrays (the tokenizer's
vocabulary) are skipped over and recorded by their length only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"

# Value type ids of the GGUF spec mapped to struct formats (little-endian).
_SCALAR_FORMATS: dict[int, str] = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_STRING = 8
_ARRAY = 9

# Arrays longer than this are not materialised; the header records their length instead.
_MAX_ARRAY_ITEMS = 64

# llama.cpp's `llama_ftype` names, for `general.file_type`.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


# llama.cpp's architectures of embedding models (encoders, and EmbeddingGemma).
_ENCODER_ARCHITECTURES = frozenset(
    {
        "bert",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "modern-bert",
        "eurobert",
        "t5encoder",
        "gemma-embedding",
    }
)


class GGUFError(ValueError):
    """The file is not a readable GGUF file (wrong magic, truncated, or malformed)."""


@dataclass(frozen=True)
class SkippedArray:
    """Stands in for an array too long to keep in memory (e.g. the vocabulary)."""

    item_type: int
    length: int


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensor_count: int
    parameter_count: int
    size_bytes: int
    tensor_names: list[str] = field(default_factory=list, repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, suffix: str) -> Any:
        """Value of ``<architecture>.<suffix>``, e.g. ``context_length``."""
        return self.metadata.get(f"{self.architecture}.{suffix}")

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if value is not None else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def quantization(self) -> str | None:
        file_type = self.metadata.get("general.file_type")
        if file_type is None:
            return None
        return FILE_TYPES.get(int(file_type), f"type{file_type}")

    @property
    def is_reranker(self) -> bool:
        """True for a model whose pooling is rank: its classifier head scores pairs."""
        return str(self.arch_value("pooling_type")) == "4"  # llama.cpp's LLAMA_POOLING_TYPE_RANK

    @property
    def is_embedding_model(self) -> bool:
        """True for encoder-style models (BERT family) or ones declaring a pooling type."""
        arch = self.architecture
        if arch in _ENCODER_ARCHITECTURES:
            return True
        return bool(self.arch_value("pooling_type")) and not self.chat_template


class _Reader:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read(self, size: int) -> bytes:
        data = self._stream.read(size)
        if len(data) != size:
            raise GGUFError("file is truncated")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("<Q")
        if length > 1 << 30:
            raise GGUFError("string length out of range")
        return self.read(length).decode("utf-8", errors="replace")

    def skip(self, size: int) -> None:
        self._stream.seek(size, 1)

    def value(self, value_type: int) -> Any:
        if value_type in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type = self.unpack("<I")
            length = self.unpack("<Q")
            if length <= _MAX_ARRAY_ITEMS:
                return [self.value(item_type) for _ in range(length)]
            self._skip_items(item_type, length)
            return SkippedArray(item_type, length)
        raise GGUFError(f"unknown value type {value_type}")

    def _skip_items(self, item_type: int, length: int) -> None:
        if item_type in _SCALAR_FORMATS:
            self.skip(struct.calcsize(_SCALAR_FORMATS[item_type]) * length)
        elif item_type == _STRING:
            for _ in range(length):
                self.skip(self.unpack("<Q"))
        else:
            for _ in range(length):
                self.value(item_type)


def read_header(path: str | Path) -> GGUFHeader:
    """Parse the header of the GGUF file at ``path``.

    Raises :class:`GGUFError` if the file is not GGUF or is cut short.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as stream:
        reader = _Reader(stream)
        if reader.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path.name} is not a GGUF file")
        version = reader.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version}")
        tensor_count = reader.unpack("<Q")
        kv_count = reader.unpack("<Q")
        if kv_count > 1_000_000 or tensor_count > 10_000_000:
            raise GGUFError("header counts out of range")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = reader.string()
            metadata[key] = reader.value(reader.unpack("<I"))
        parameters = 0
        names: list[str] = []
        for _ in range(tensor_count):
            names.append(reader.string())
            n_dims = reader.unpack("<I")
            if n_dims > 8:
                raise GGUFError("tensor has too many dimensions")
            count = 1
            for _ in range(n_dims):
                count *= reader.unpack("<Q")
            reader.unpack("<I")  # tensor type
            reader.unpack("<Q")  # data offset
            parameters += count
    return GGUFHeader(
        version=version,
        metadata=metadata,
        tensor_count=tensor_count,
        parameter_count=parameters,
        size_bytes=size,
        tensor_names=names,
    )
