"""Loading one model instance: weights, context, chat template and batching engine.

Blocking (seconds for big models): the manager calls it in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from lmserve.config import ModelDefaults
from lmserve.engine.embeddings import Embedder
from lmserve.engine.llama import ContextConfig, LlamaContext, LlamaModel, gpu_offload_supported
from lmserve.engine.scheduler import BatchingEngine
from lmserve.engine.template import ChatTemplate
from lmserve.models.catalog import CatalogEntry

logger = logging.getLogger("lmserve.models")


@dataclass(frozen=True)
class LoadOptions:
    """What a load may set; ``None`` takes the server's defaults."""

    identifier: str | None = None
    context_length: int | None = None
    parallel: int | None = None
    ttl: float | None = None  # idle seconds before unloading; None: never (or the JIT default)
    gpu: str | None = None  # see lmserve.config.check_gpu_setting


def gpu_layers(gpu: str, n_layers: int) -> int:
    """llama.cpp's ``n_gpu_layers`` for a GPU setting.

    ``auto`` offloads every layer when the build can (LM Studio's default on a GPU machine)
    and none otherwise; a CPU build ignores any other value too.
    """
    if gpu == "auto":
        gpu = "max" if gpu_offload_supported() else "off"
    if gpu == "off":
        return 0
    if gpu == "max":
        return -1
    return round(float(gpu) * n_layers)


@dataclass
class LoadedModel:
    identifier: str
    entry: CatalogEntry
    llama: LlamaModel
    template: ChatTemplate
    engine: BatchingEngine
    config: dict[str, object]
    memory_bytes: int
    jit: bool = False
    ttl: float | None = None
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0  # requests between model lookup and their last event
    _embedder: Embedder | None = None
    _embedder_lock: threading.Lock = field(default_factory=threading.Lock)

    def embedder(self) -> Embedder:
        """The model's embedding context, made on first use (blocking: call off the loop)."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = Embedder(self.llama, self.n_ctx)
            return self._embedder

    @property
    def n_ctx(self) -> int:
        """Context length of one slot: the longest prompt plus completion a request can have."""
        return self.engine.n_ctx_per_slot

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.engine.busy_slots > 0 or self.engine.queue_depth > 0

    def ttl_remaining(self, now: float | None = None) -> float | None:
        if self.ttl is None:
            return None
        idle = (now if now is not None else time.monotonic()) - self.last_used
        return max(0.0, self.ttl - idle)

    def close(self, reason: str) -> None:
        self.engine.close(reason)
        with self._embedder_lock:
            if self._embedder is not None:
                self._embedder.close()
        self.llama.close()


def estimate_memory(entry: CatalogEntry, n_ctx_total: int) -> int:
    """Bytes the instance will take: the weights plus its f16 KV cache, plus a tenth."""
    header = entry.header
    n_layer = int(header.arch_value("block_count") or 0)
    n_embd = int(header.arch_value("embedding_length") or 0)
    n_head = int(header.arch_value("attention.head_count") or 1) or 1
    n_head_kv = int(header.arch_value("attention.head_count_kv") or n_head)
    key_length = int(header.arch_value("attention.key_length") or n_embd // n_head)
    value_length = int(header.arch_value("attention.value_length") or key_length)
    kv_bytes = n_layer * n_ctx_total * n_head_kv * (key_length + value_length) * 2
    return int((entry.size_bytes + kv_bytes) * 1.1)


def plan_context(
    entry: CatalogEntry, options: LoadOptions, defaults: ModelDefaults
) -> tuple[int, int]:
    """(slots, context length per slot) for a load, capped at what the model was trained for."""
    parallel = options.parallel or defaults.parallel
    wanted = options.context_length or defaults.context_length
    trained = entry.header.context_length or wanted
    return parallel, min(wanted, trained)


def load_instance(
    entry: CatalogEntry,
    identifier: str,
    options: LoadOptions,
    defaults: ModelDefaults,
    *,
    jit: bool,
    ttl: float | None,
) -> LoadedModel:
    started = time.perf_counter()
    parallel, n_ctx = plan_context(entry, options, defaults)
    n_layers = int(entry.header.arch_value("block_count") or 0)
    gpu = options.gpu or defaults.gpu
    offloaded = gpu_layers(gpu, n_layers)
    llama = LlamaModel(entry.path, n_gpu_layers=offloaded)
    try:
        context = LlamaContext(
            llama,
            ContextConfig(
                n_slots=parallel,
                n_ctx_per_slot=n_ctx,
                n_batch=defaults.batch_size,
                n_threads=defaults.threads,
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
        llama, context, n_slots=parallel, max_queue=defaults.max_queue, name=identifier
    )
    config: dict[str, object] = {
        "context_length": engine.n_ctx_per_slot,
        "eval_batch_size": defaults.batch_size,
        "parallel": parallel,
        "gpu": gpu,
        # Layers llama.cpp was asked to put on a GPU (-1: all); 0 on a CPU-only build.
        "gpu_layers": offloaded,
    }
    loaded = LoadedModel(
        identifier=identifier,
        entry=entry,
        llama=llama,
        template=template,
        engine=engine,
        config=config,
        memory_bytes=estimate_memory(entry, parallel * engine.n_ctx_per_slot),
        jit=jit,
        ttl=ttl,
    )
    on_gpu = offloaded != 0 and gpu_offload_supported()
    logger.info(
        "loaded %s (%s, %d slots x %d tokens%s%s) in %.2f s",
        identifier,
        entry.path.name,
        parallel,
        engine.n_ctx_per_slot,
        f", GPU offload {gpu}" if on_gpu else "",
        f", ttl {ttl:g} s" if ttl is not None else "",
        time.perf_counter() - started,
    )
    return loaded
