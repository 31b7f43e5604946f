"""Loading one model instance: a worker process with the engine, and the chat template.

Blocking (seconds for big models, twice that when the self-check retries without weight
repacking): the manager calls it in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmserve.config import (
    KV_CACHE_TYPE_BYTES,
    ModelDefaults,
    PredictionDefaults,
    default_prompt_cache_ram,
)
from lmserve.engine.client import EngineWorker
from lmserve.engine.exits import WorkerExit
from lmserve.engine.prompt_cache.settings import PromptCacheSettings
from lmserve.engine.template import ChatTemplate
from lmserve.engine.types import MEDIA_MARKER, WorkerStartError
from lmserve.engine.wire import WorkerInfo, WorkerSpec
from lmserve.models.catalog import CatalogEntry
from lmserve.models.repack import RepackChoice, VerdictCache, start_checked, verdict_facts
from lmserve.paths import prompt_cache_dir
from lmserve.rpc.probe import RpcEndpointError, check_endpoint

logger = logging.getLogger("lmserve.models")


# Starts a model's engine somewhere else than in a local worker process (its replicas).
Deploy = Callable[[WorkerSpec, asyncio.AbstractEventLoop], Any]


@dataclass(frozen=True)
class LoadOptions:
    """What a load may set; ``None`` takes the server's defaults."""

    identifier: str | None = None
    context_length: int | None = None
    parallel: int | None = None
    ttl: float | None = None  # idle seconds before unloading; None: never (or the JIT default)
    gpu: str | None = None  # see lmserve.config.check_gpu_setting
    repack: str | None = None  # see lmserve.config.check_repack_setting
    flash_attention: str | None = None  # auto, on or off: see lmserve.config.FLASH_ATTENTION_HELP
    draft_model: str | None = None  # a downloaded model to draft with (speculative decoding)
    kv_cache_type_k: str | None = None  # see lmserve.config.KV_CACHE_TYPES
    kv_cache_type_v: str | None = None
    # A vision projector's path (checked by lmserve.models.projectors.check_projector), in
    # place of the one in the model's folder.
    mmproj: str | None = None
    # llama.cpp RPC workers holding its layers (host:port), and each device's share.
    rpc: tuple[str, ...] | None = None
    tensor_split: tuple[float, ...] | None = None


@dataclass
class LoadedModel:
    identifier: str
    entry: CatalogEntry
    engine: EngineWorker
    template: ChatTemplate
    config: dict[str, object]
    memory_bytes: int
    options: LoadOptions = field(default_factory=LoadOptions)
    # What requests to this model get for the sampling settings they leave out.
    prediction: PredictionDefaults = field(default_factory=PredictionDefaults)
    repack: RepackChoice | None = None
    jit: bool = False
    ttl: float | None = None
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0  # requests between model lookup and their last event
    draft_model: str | None = None  # the draft model its worker has loaded, if any
    mmproj: str | None = None  # the vision projector its worker was given, if any

    @property
    def vision(self) -> bool:
        """Whether the model takes images: its worker loaded a projector (or was given one,
        by a worker that does not say)."""
        return self.engine.info.vision or self.mmproj is not None

    @property
    def vocab(self) -> WorkerInfo:
        """The model's vocabulary and shape, as its worker reported them when it loaded."""
        return self.engine.info

    @property
    def n_ctx(self) -> int:
        """Context length of one slot: the longest prompt plus completion a request can have."""
        return self.engine.n_ctx_per_slot

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.engine.in_flight > 0

    def ttl_remaining(self, now: float | None = None) -> float | None:
        if self.ttl is None:
            return None
        idle = (now if now is not None else time.monotonic()) - self.last_used
        return max(0.0, self.ttl - idle)

    def close(self, reason: str) -> None:
        self.engine.close(reason)


def projector_for(entry: CatalogEntry, options: LoadOptions) -> str | None:
    """The vision projector a load gives the worker: the one asked for, else the folder's."""
    if options.mmproj:
        return options.mmproj
    return str(entry.mmproj) if entry.mmproj is not None else None


def estimate_memory(
    entry: CatalogEntry,
    n_ctx_total: int,
    kv_types: tuple[str, str] = ("f16", "f16"),
    mmproj: str | None = None,
) -> int:
    """Bytes the instance will take: the weights (and projector) plus its KV cache, plus a
    tenth."""
    header = entry.header
    n_layer = int(header.arch_value("block_count") or 0)
    n_embd = int(header.arch_value("embedding_length") or 0)
    n_head = int(header.arch_value("attention.head_count") or 1) or 1
    n_head_kv = int(header.arch_value("attention.head_count_kv") or n_head)
    key_length = int(header.arch_value("attention.key_length") or n_embd // n_head)
    value_length = int(header.arch_value("attention.value_length") or key_length)
    per_k, per_v = (KV_CACHE_TYPE_BYTES[kind] for kind in kv_types)
    kv_bytes = n_layer * n_ctx_total * n_head_kv * (key_length * per_k + value_length * per_v)
    projector = os.path.getsize(mmproj) if mmproj and os.path.isfile(mmproj) else 0
    return int((entry.size_bytes + projector + kv_bytes) * 1.1)


def prompt_cache_settings(defaults: ModelDefaults) -> PromptCacheSettings | None:
    """The worker's prompt cache, as the server was told (``None``: off)."""
    config = defaults.prompt_cache
    if not config.enabled or (config.memory_bytes == 0 and config.disk_bytes == 0):
        return None
    memory = config.memory_bytes if config.memory_bytes is not None else default_prompt_cache_ram()
    return PromptCacheSettings(
        memory_bytes=memory,
        disk_bytes=config.disk_bytes,
        disk_folder=str(prompt_cache_dir()) if config.disk_bytes > 0 else None,
        disk_min_tokens=config.disk_min_tokens,
    )


def fitting_context(prompt_tokens: int) -> int:
    """A context length for a prompt and its answer: the next multiple of 1024 that leaves a
    quarter of it (and at least 1,024 tokens) for the answer."""
    needed = prompt_tokens + max(1024, prompt_tokens // 4)
    return -(-needed // 1024) * 1024


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
    verdicts: VerdictCache,
    loop: asyncio.AbstractEventLoop,
    on_exit: Callable[[WorkerExit], None] | None = None,
    deploy: Deploy | None = None,
) -> LoadedModel:
    """Start the model's worker (after the self-check) and wrap it; raises
    :class:`lmserve.engine.types.WorkerStartError`.  ``deploy`` starts it elsewhere instead
    (as Ray Serve replicas: :mod:`lmserve.replicas`), giving an engine with the same calls."""
    started = time.perf_counter()
    parallel, n_ctx = plan_context(entry, options, defaults)
    gpu = options.gpu or defaults.gpu
    setting = options.repack or defaults.repack
    kv_types = (
        options.kv_cache_type_k or defaults.kv_cache_type_k,
        options.kv_cache_type_v or defaults.kv_cache_type_v,
    )
    prompt_cache = prompt_cache_settings(defaults)
    mmproj = projector_for(entry, options)
    rpc = options.rpc if options.rpc is not None else defaults.rpc
    tensor_split = (
        options.tensor_split if options.tensor_split is not None else defaults.tensor_split
    )
    if rpc and deploy is not None:
        raise WorkerStartError(
            "a model served by Ray replicas cannot also be split over RPC workers: every "
            "replica would need workers of its own (a worker serves one model at a time)"
        )
    for endpoint in rpc:  # llama.cpp would abort the worker on a bad one: check them here
        try:
            check_endpoint(endpoint)
        except RpcEndpointError as exc:
            raise WorkerStartError(str(exc)) from None

    def start(repack: bool, self_check: bool) -> EngineWorker:
        spec = WorkerSpec(
            path=str(entry.path),
            name=identifier,
            n_layers=int(entry.header.arch_value("block_count") or 0),
            n_slots=parallel,
            n_ctx_per_slot=n_ctx,
            n_batch=defaults.batch_size,
            n_threads=defaults.threads,
            max_queue=defaults.max_queue,
            gpu=gpu,
            repack=repack,
            flash_attention=options.flash_attention or defaults.flash_attention,
            self_check=self_check,
            speculative=defaults.speculative,
            type_k=kv_types[0],
            type_v=kv_types[1],
            prompt_cache=prompt_cache,
            mmproj=mmproj,
            media_marker=MEDIA_MARKER,
            log_level=logging.getLogger("lmserve").getEffectiveLevel(),
            rpc_servers=rpc,
            tensor_split=tensor_split,
        )
        if deploy is not None:
            return deploy(spec, loop)
        return EngineWorker(spec, loop, on_exit=on_exit)

    engine, repack = start_checked(setting, verdicts, verdict_facts(entry.quantization, gpu), start)
    info = engine.info
    template = ChatTemplate(info.chat_template, bos_token=info.bos_text, eos_token=info.eos_text)
    if template.is_fallback:
        logger.warning(
            "%s has no usable chat template; using ChatML%s",
            identifier,
            f" ({template.compile_error})" if template.compile_error else "",
        )
    config: dict[str, object] = {
        "context_length": engine.n_ctx_per_slot,
        "eval_batch_size": defaults.batch_size,
        "parallel": parallel,
        "gpu": gpu,
        # Layers llama.cpp was asked to put on a GPU (-1: all); 0 on a CPU-only build.
        "gpu_layers": info.gpu_layers,
        **repack.describe(),
        "flash_attention": info.flash_attention,
        "flash_attention_reason": info.flash_attention_reason,
        "kv_cache_type_k": kv_types[0],
        "kv_cache_type_v": kv_types[1],
        "prompt_cache": info.prompt_cache,
        "mmproj": mmproj,
    }
    if info.placement:  # some layers on RPC workers or GPUs: which device holds what
        config["rpc"] = list(rpc)
        config["placement"] = list(info.placement)
    if deploy is not None:  # Ray Serve replicas, each with the slots above (None: autoscaled)
        config["replicas"] = engine.replicas
    if changed := defaults.prediction.describe():
        # Only what the server was told: the rest are LM Studio's defaults.
        config["prediction_defaults"] = changed
    loaded = LoadedModel(
        identifier=identifier,
        entry=entry,
        engine=engine,
        template=template,
        config=config,
        # Weights and KV cache; the prompt cache has a budget of its own (--prompt-cache-ram).
        memory_bytes=estimate_memory(entry, parallel * engine.n_ctx_per_slot, kv_types, mmproj),
        options=options,
        prediction=defaults.prediction,
        repack=repack,
        jit=jit,
        ttl=ttl,
        mmproj=mmproj,
    )
    on_gpu = info.gpu_layers != 0 and info.gpu_offload
    logger.info(
        "loaded %s (%s%s, %d slots x %d tokens%s%s) in %.2f s, engine process %d",
        identifier,
        entry.path.name,
        f" with projector {os.path.basename(mmproj)}" if mmproj else "",
        parallel,
        engine.n_ctx_per_slot,
        f", GPU offload {gpu}" if on_gpu else "",
        f", ttl {ttl:g} s" if ttl is not None else "",
        time.perf_counter() - started,
        engine.pid,
    )
    logger.info(
        "%s: llama.cpp's weight repacking is %s: %s",
        identifier,
        "on" if repack.enabled else "off",
        repack.reason,
    )
    logger.info(
        "%s: flash attention %s: %s",
        identifier,
        {True: "on", False: "off"}.get(info.flash_attention, "auto"),
        info.flash_attention_reason,
    )
    if changed:
        logger.info(
            "%s: requests that leave them out get %s",
            identifier,
            ", ".join(f"{name}={value!r}" for name, value in changed.items()),
        )
    return loaded
