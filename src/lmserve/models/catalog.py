"""The models on disk: ``$LMSERVE_HOME/models/<publisher>/<repo>/*.gguf``.

Each GGUF file becomes a :class:`CatalogEntry` named as LM Studio names it (its docs' ``lms ls``
and model listings, its SDKs' test suite): the key comes from the repository folder, in lower
case, without the format suffix or a quantization (``hugging-quants/Llama-3.2-1B-Instruct-Q8_0-
GGUF`` → ``llama-3.2-1b-instruct``, ``ZiangWu/MobileVLM_V2-1.7B-GGUF/ggml-model-q4_k.gguf`` →
``mobilevlm_v2-1.7b``), and an embedding model's starts with ``text-embedding-``
(``nomic-ai/nomic-embed-text-v1.5-GGUF`` → ``text-embedding-nomic-embed-text-v1.5``). A folder
holding several models of different names (not quantizations of one) keys each by its file
name instead. Several quantizations of one model are its variants: each is ``key@quant``, and
the bare key names the first. When folders of two publishers give the same key, each model is
``publisher/key``. That key is the model's public id, and the identifier it loads under.

A model also answers to ``publisher/key`` (and, for an embedding model, ``publisher/`` and the
key without ``text-embedding-``: ``nomic-ai/nomic-embed-text-v1.5``), its path under the
models folder, ``publisher/repo``, and the key lmserve gave it before it followed LM Studio,
from the file's name (``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``smollm2-135m-instruct``, kept
as :attr:`CatalogEntry.key`), with ``@quant``. Names are matched without regard to case.
Only headers are read, never weights.

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
_FORMAT_SUFFIX = re.compile(r"[.\-_]gguf$", re.IGNORECASE)
# LM Studio's prefix for the keys of embedding models.
EMBEDDING_PREFIX = "text-embedding-"


@dataclass(frozen=True)
class CatalogEntry:
    # The key of the file's name (lmserve's own, before it named models as LM Studio does).
    key: str
    path: Path
    publisher: str
    repo: str
    header: GGUFHeader
    # The vision projector in the model's folder (a language model's only), if there is one.
    mmproj: Path | None = None
    # LM Studio's key (:func:`lmstudio_key`), set by the catalog, which sees the folder.
    lmstudio_key: str = ""

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


def repo_key(repo: str) -> str:
    """The key of a repository folder's name: lower case, without ``-GGUF`` or a quant."""
    return _QUANT_SUFFIX.sub("", _FORMAT_SUFFIX.sub("", repo)).lower()


def lmstudio_key(entry: CatalogEntry, folder: list[CatalogEntry]) -> str:
    """LM Studio's key for ``entry``, one of the models of its ``folder``: the folder's name's
    key, or the file's where the folder holds models of several names; ``text-embedding-``
    before an embedding model's."""
    names = {other.key for other in folder}
    base = (repo_key(entry.repo) if len(names) == 1 else "") or entry.key
    if entry.model_type == "embeddings" and not base.startswith(EMBEDDING_PREFIX):
        return EMBEDDING_PREFIX + base
    return base


class Catalog:
    """A snapshot of the models folder, with name resolution."""

    def __init__(self, entries: list[CatalogEntry], projectors: list[Path] | None = None) -> None:
        self.entries = [_named(entry, entries) for entry in entries]
        self.projectors = projectors or []
        self._names: dict[str, CatalogEntry] = {}
        self._public: dict[Path, str] = {}
        groups: dict[str, list[CatalogEntry]] = {}
        for entry in self.entries:
            groups.setdefault(entry.lmstudio_key, []).append(entry)
        aliases: list[tuple[str, CatalogEntry]] = []
        for key, group in groups.items():
            publishers = len({entry.publisher.lower() for entry in group}) > 1
            aliases.append((key, group[0]))
            for entry in group:
                base = f"{entry.publisher}/{key}".lower() if publishers else key
                variants = [other for other in group if other.path.parent == entry.path.parent]
                quant = (entry.quantization or "").lower()
                variant = f"{base}@{quant}" if len(variants) > 1 and quant else None
                first = entry is variants[0]
                public = base if first else variant
                if public is None or public in self._names:
                    public = entry.relative_path.lower()
                self._names[public] = entry
                self._public[entry.path] = public
                aliases += [(name, entry) for name in _aliases(entry, base, variant)]
        # Then lmserve's own names from before, by file name: they name what they named.
        legacy: dict[str, list[CatalogEntry]] = {}
        for entry in self.entries:
            legacy.setdefault(entry.key, []).append(entry)
        for key, group in legacy.items():
            aliases.append((key, group[0]))
            if len(group) > 1:
                aliases += [
                    (f"{key}@{entry.quantization.lower()}", entry)
                    for entry in group
                    if entry.quantization
                ]
        for name, entry in aliases:
            self._names.setdefault(name.lower(), entry)
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

    def key_of(self, path: Path) -> str:
        """The public id of the model file at ``path`` (the key of its name if it is none)."""
        entry = next((entry for entry in self.entries if entry.path == path), None)
        return self.public_id(entry) if entry is not None else model_key(path.name)

    def names_for(self, entry: CatalogEntry) -> list[str]:
        return [name for name, value in self._names.items() if value is entry]

    def public_id(self, entry: CatalogEntry) -> str:
        """The id to show for ``entry`` and to load it under: LM Studio's key (``key``,
        ``key@quant`` for a variant but the first, ``publisher/key`` where publishers share
        the key), else its path under the models folder."""
        public = self._public.get(entry.path)
        if public is not None and self._names.get(public) is entry:
            return public
        current = self._names.get(entry.relative_path.lower())
        if current is not None and current is not entry:  # an entry of an earlier scan
            return self.public_id(current)
        return entry.relative_path.lower()


def _named(entry: CatalogEntry, entries: list[CatalogEntry]) -> CatalogEntry:
    """``entry`` with its LM Studio key, unless it has one."""
    if entry.lmstudio_key:
        return entry
    folder = [other for other in entries if other.path.parent == entry.path.parent]
    return replace(entry, lmstudio_key=lmstudio_key(entry, folder))


def _aliases(entry: CatalogEntry, base: str, variant: str | None) -> list[str]:
    """The other names LM Studio's users give ``entry`` (see the module's docstring)."""
    key = entry.lmstudio_key
    publisher = entry.publisher
    names = [variant] if variant else []
    names += [f"{publisher}/{key}", f"{publisher}/{key.removeprefix(EMBEDDING_PREFIX)}"]
    if variant:
        names.append(f"{publisher}/{variant.rpartition('/')[2]}")
    names += [entry.relative_path, f"{publisher}/{entry.repo}", base]
    return names


def _with_projector(entry: CatalogEntry, projectors: list[Path]) -> CatalogEntry:
    """``entry`` with the projector of its folder, if it is a language model and there is one
    (:func:`lmserve.models.projectors.choose_projector` picks among several)."""
    if entry.model_type != "llm":
        return entry
    beside = {path.name: path for path in projectors if path.parent == entry.path.parent}
    chosen = choose_projector(beside, entry.quantization)
    return replace(entry, mmproj=beside[chosen]) if chosen is not None else entry
