"""The models on disk: ``$LMSERVE_HOME/models/<publisher>/<repo>/*.gguf``.

Each GGUF file becomes a :class:`CatalogEntry` with a stable, readable key in LM Studio's style
(``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``smollm2-135m-instruct``).  When two files would share a
key (two quantizations of one model) each also gets ``key@quant``, and the bare key names the
first of them.  Only headers are read, never weights.

A vision projector (``mmproj``, see :mod:`lmserve.models.projectors`) is never an entry: the
language models of its folder get it as :attr:`CatalogEntry.mmproj`, and a name that means the
projector resolves to nothing (:meth:`Catalog.not_a_model` says whose projector it is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from lmserve.models.gguf import GGUFError, GGUFHeader, read_header
from lmserve.models.projectors import choose_projector, is_projector_header, is_projector_name
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
    # The vision projector in the model's folder (a language model's only), if there is one.
    mmproj: Path | None = None

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
        if self.header.is_reranker:
            return "reranker"
        return "embeddings" if self.header.is_embedding_model else "llm"

    @property
    def vision(self) -> bool:
        """Whether the model sees: its folder has a projector for it."""
        return self.mmproj is not None


def model_key(file_name: str) -> str:
    """The readable key of a GGUF file name: lower case, without extension, shard or quant."""
    stem = file_name[: -len(".gguf")] if file_name.lower().endswith(".gguf") else file_name
    stem = _SHARD.sub("", stem)
    stem = _QUANT_SUFFIX.sub("", stem)
    return stem.lower()


class Catalog:
    """A snapshot of the models folder, with name resolution."""

    def __init__(self, entries: list[CatalogEntry], projectors: list[Path] | None = None) -> None:
        self.entries = entries
        self.projectors = projectors or []
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
        # What a user may call a projector: its key, its file name, its path under models/.
        self._projector_names: dict[str, Path] = {}
        for path in self.projectors:
            relative = f"{path.parent.parent.name}/{path.parent.name}/{path.name}"
            for name in (model_key(path.name), path.name, relative):
                self._projector_names.setdefault(name.lower(), path)

    @classmethod
    def scan(cls, root: Path | None = None) -> Catalog:
        root = root or models_dir()
        entries: list[CatalogEntry] = []
        projectors: list[Path] = []
        if root.is_dir():
            for path in sorted(root.glob("*/*/*.gguf")):
                shard = _SHARD.search(path.stem)
                if shard and int(shard.group(1)) != 1:
                    continue  # later shards belong to the first one
                try:
                    header = read_header(path)
                except (GGUFError, OSError):
                    if is_projector_name(path.name):
                        projectors.append(path)
                    continue
                if is_projector_header(header):
                    projectors.append(path)
                    continue
                publisher, repo = path.parent.parent.name, path.parent.name
                entries.append(CatalogEntry(model_key(path.name), path, publisher, repo, header))
        return cls([_with_projector(entry, projectors) for entry in entries], projectors)

    def resolve(self, name: str) -> CatalogEntry | None:
        """The entry a request's model name refers to, or None."""
        return self._names.get(name.strip().lower())

    def not_a_model(self, name: str) -> str | None:
        """Why ``name`` is no model, when it names a projector: whose it is, in a sentence."""
        path = self._projector_names.get(name.strip().lower())
        if path is None:
            return None
        owners = [e for e in self.entries if e.mmproj == path] or [
            e for e in self.entries if e.path.parent == path.parent and e.model_type == "llm"
        ]
        if not owners:
            return (
                f"'{name}' is not a model: it is a vision projector ({path.name}), and its "
                "folder has no model to use it. Put it beside its model."
            )
        whose = ", ".join(self.public_id(owner) for owner in owners)
        return (
            f"'{name}' is not a model: it is the vision projector of {whose}. "
            "Name the model instead; its projector loads with it."
        )

    def names_for(self, entry: CatalogEntry) -> list[str]:
        return [name for name, value in self._names.items() if value is entry]

    def public_id(self, entry: CatalogEntry) -> str:
        """The id to show for ``entry``: its bare key if that names it, else ``key@quant``."""
        if self._names.get(entry.key) is entry:
            return entry.key
        if entry.quantization:
            return f"{entry.key}@{entry.quantization.lower()}"
        return entry.relative_path


def _with_projector(entry: CatalogEntry, projectors: list[Path]) -> CatalogEntry:
    """``entry`` with the projector of its folder, if it is a language model and there is one
    (:func:`lmserve.models.projectors.choose_projector` picks among several)."""
    if entry.model_type != "llm":
        return entry
    beside = {path.name: path for path in projectors if path.parent == entry.path.parent}
    chosen = choose_projector(beside, entry.quantization)
    return replace(entry, mmproj=beside[chosen]) if chosen is not None else entry
