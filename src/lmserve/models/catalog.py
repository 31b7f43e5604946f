"""The models on disk: ``$LMSERVE_HOME/models/<publisher>/<repo>/*.gguf``.

Each GGUF file becomes a :class:`CatalogEntry` with a stable, readable key in LM Studio's style
(``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``smollm2-135m-instruct``).  When two files would share a
key (two quantizations of one model) each also gets ``key@quant``, and the bare key names the
first of them.  Only headers are read, never weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lmserve.models.gguf import GGUFError, GGUFHeader, read_header
from lmserve.paths import models_dir

_QUANT_SUFFIX = re.compile(r"[.\-_](?:u?i?q\d[\w]*|f16|f32|bf16|fp16|fp32|mxfp4)$", re.IGNORECASE)
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    path: Path
    publisher: str
    repo: str
    header: GGUFHeader

    @property
    def relative_path(self) -> str:
        return f"{self.publisher}/{self.repo}/{self.path.name}"

    @property
    def quantization(self) -> str | None:
        return self.header.quantization

    @property
    def shard_paths(self) -> list[Path]:
        """All files of the model: the path itself, or every shard of a split GGUF."""
        shard = _SHARD.search(self.path.stem)
        if not shard:
            return [self.path]
        stem = self.path.stem[: shard.start()]
        return sorted(self.path.parent.glob(f"{stem}-*-of-{shard.group(2)}.gguf"))

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.shard_paths if path.exists())

    @property
    def model_type(self) -> str:
        return "embeddings" if self.header.is_embedding_model else "llm"


def model_key(file_name: str) -> str:
    """The readable key of a GGUF file name: lower case, without extension, shard or quant."""
    stem = file_name[: -len(".gguf")] if file_name.lower().endswith(".gguf") else file_name
    stem = _SHARD.sub("", stem)
    stem = _QUANT_SUFFIX.sub("", stem)
    return stem.lower()


class Catalog:
    """A snapshot of the models folder, with name resolution."""

    def __init__(self, entries: list[CatalogEntry]) -> None:
        self.entries = entries
        self._names: dict[str, CatalogEntry] = {}
        groups: dict[str, list[CatalogEntry]] = {}
        for entry in entries:
            groups.setdefault(entry.key, []).append(entry)
        for key, group in groups.items():
            self._names.setdefault(key, group[0])
            for entry in group:
                if len(group) > 1 and entry.quantization:
                    self._names.setdefault(f"{key}@{entry.quantization.lower()}", entry)
                self._names.setdefault(entry.relative_path.lower(), entry)
                self._names.setdefault(f"{entry.publisher}/{entry.repo}".lower(), entry)

    @classmethod
    def scan(cls, root: Path | None = None) -> Catalog:
        root = root or models_dir()
        entries: list[CatalogEntry] = []
        if root.is_dir():
            for path in sorted(root.glob("*/*/*.gguf")):
                shard = _SHARD.search(path.stem)
                if shard and int(shard.group(1)) != 1:
                    continue  # later shards belong to the first one
                try:
                    header = read_header(path)
                except (GGUFError, OSError):
                    continue
                publisher, repo = path.parent.parent.name, path.parent.name
                entries.append(CatalogEntry(model_key(path.name), path, publisher, repo, header))
        return cls(entries)

    def resolve(self, name: str) -> CatalogEntry | None:
        """The entry a request's model name refers to, or None."""
        return self._names.get(name.strip().lower())

    def names_for(self, entry: CatalogEntry) -> list[str]:
        return [name for name, value in self._names.items() if value is entry]

    def public_id(self, entry: CatalogEntry) -> str:
        """The id to show for ``entry``: its bare key if that names it, else ``key@quant``."""
        if self._names.get(entry.key) is entry:
            return entry.key
        if entry.quantization:
            return f"{entry.key}@{entry.quantization.lower()}"
        return entry.relative_path
