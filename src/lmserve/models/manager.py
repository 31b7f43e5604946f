"""Loaded models: each one a llama.cpp model, its chat template and its batching engine."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmserve.engine.llama import ContextConfig, LlamaContext, LlamaModel
from lmserve.engine.scheduler import BatchingEngine
from lmserve.engine.template import ChatTemplate
from lmserve.models.catalog import Catalog, CatalogEntry

logger = logging.getLogger("lmserve.models")


class ModelNotFound(LookupError):
    """No loaded (or, for loading, downloaded) model has this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known


@dataclass
class LoadedModel:
    identifier: str
    entry: CatalogEntry
    llama: LlamaModel
    template: ChatTemplate
    engine: BatchingEngine
    loaded_at: float = field(default_factory=time.time)

    @property
    def n_ctx(self) -> int:
        """Context length of one slot: the longest prompt plus completion a request can have."""
        return self.engine.n_ctx_per_slot


@dataclass(frozen=True)
class LoadOptions:
    context_length: int = 4096
    parallel: int = 4
    max_queue: int = 64
    threads: int = 0
    batch_size: int = 512
    identifier: str | None = None


class ModelManager:
    """Owns the catalog of downloaded models and the set of loaded ones."""

    def __init__(self, models_root: Path) -> None:
        self.models_root = models_root
        self.catalog = Catalog.scan(models_root)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def rescan(self) -> Catalog:
        self.catalog = Catalog.scan(self.models_root)
        return self.catalog

    def load(self, name: str, options: LoadOptions | None = None) -> LoadedModel:
        """Load the downloaded model ``name`` (blocking: call it off the event loop)."""
        options = options or LoadOptions()
        entry = self.catalog.resolve(name) or self.rescan().resolve(name)
        if entry is None:
            raise ModelNotFound(name, [self.catalog.public_id(e) for e in self.catalog.entries])
        identifier = options.identifier or self.catalog.public_id(entry)
        started = time.perf_counter()
        llama = LlamaModel(entry.path)
        try:
            n_ctx = min(options.context_length, llama.n_ctx_train or options.context_length)
            context = LlamaContext(
                llama,
                ContextConfig(
                    n_slots=options.parallel,
                    n_ctx_per_slot=n_ctx,
                    n_batch=options.batch_size,
                    n_threads=options.threads,
                ),
            )
        except Exception:
            llama.close()
            raise
        template = ChatTemplate(
            llama.chat_template,
            bos_token=llama.token_text(llama.bos_id),
            eos_token=llama.token_text(llama.eos_id),
        )
        if template.is_fallback:
            logger.warning(
                "%s has no usable chat template; using ChatML%s",
                identifier,
                f" ({template.compile_error})" if template.compile_error else "",
            )
        engine = BatchingEngine(
            llama,
            context,
            n_slots=options.parallel,
            max_queue=options.max_queue,
            name=identifier,
        )
        loaded = LoadedModel(identifier, entry, llama, template, engine)
        with self._lock:
            previous = self._loaded.pop(identifier, None)
            self._loaded[identifier] = loaded
        if previous is not None:
            self._close(previous)
        logger.info(
            "loaded %s (%s, %d slots x %d tokens) in %.2f s",
            identifier,
            entry.path.name,
            options.parallel,
            loaded.n_ctx,
            time.perf_counter() - started,
        )
        return loaded

    def get(self, name: str) -> LoadedModel:
        """The loaded model a request names: by identifier, key, or path under models/."""
        with self._lock:
            loaded = self._loaded.get(name)
            if loaded is None:
                entry = self.catalog.resolve(name)
                loaded = (
                    next((model for model in self._loaded.values() if model.entry is entry), None)
                    if entry is not None
                    else None
                )
            if loaded is None:
                raise ModelNotFound(name, list(self._loaded))
            return loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def unload(self, identifier: str) -> None:
        with self._lock:
            loaded = self._loaded.pop(identifier, None)
        if loaded is None:
            raise ModelNotFound(identifier, list(self._loaded))
        self._close(loaded)

    def close(self) -> None:
        with self._lock:
            models, self._loaded = list(self._loaded.values()), {}
        for loaded in models:
            self._close(loaded)

    @staticmethod
    def _close(loaded: LoadedModel) -> None:
        loaded.engine.close()
        loaded.llama.close()
