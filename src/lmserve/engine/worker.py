"""A model's worker process: llama.cpp, the scheduler and the samplers, away from the server.

``python -m lmserve.engine.worker FD`` is started by :class:`lmserve.engine.client.
EngineWorker` with one end of a socket pair as ``FD``.  It reads a :class:`WorkerSpec`, loads
the model, runs the hardware self-check (:mod:`lmserve.engine.selfcheck`), answers
:class:`WorkerInfo`, and then serves until told to close or until the server goes away.

What crosses the pipe (pickled tuples, see :mod:`lmserve.engine.wire`): requests in, and one
message per engine step out, holding every event of that step for every request.  A crash in
C code here ends this process only; the server sees the pipe close and fails what was in
flight.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from lmserve.engine import placement, wire
from lmserve.engine.draft import DraftModel
from lmserve.engine.embeddings import Embedder
from lmserve.engine.exits import ENGINE_BUG_STATUS
from lmserve.engine.grammar import tokenizer as grammar_tokenizer
from lmserve.engine.llama import (
    ContextConfig,
    LlamaContext,
    LlamaModel,
    ModelLoadError,
    choose_flash_attention,
    default_threads,
    gpu_offload_supported,
    in_passing_thread,
    llama_build,
)
from lmserve.engine.prompt_cache.cache import PromptCache, probe_layout
from lmserve.engine.prompt_cache.disk import file_sha256, known_sha256
from lmserve.engine.prompt_cache.state import StateFormatError
from lmserve.engine.rerank import Reranker
from lmserve.engine.scheduler import BatchingEngine
from lmserve.engine.selfcheck import (
    SelfCheckFailed,
    crash_if_injected,
    injected_faults,
    self_check,
)
from lmserve.engine.types import (
    EngineError,
    Event,
    Finished,
    GenerationRequest,
    ImageError,
    ImageInput,
    TokenizedPrompt,
)
from lmserve.engine.vision import Projector
from lmserve.engine.wire import WorkerInfo, WorkerSpec

logger = logging.getLogger("lmserve.worker")


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


class _RemoteRequest:
    """The worker's stand-in for a request whose stream lives in the server process."""

    def __init__(
        self,
        request_id: int,
        request: GenerationRequest,
        outbox: _PipeOutbox,
        registry: dict[int, _RemoteRequest],
    ) -> None:
        self.id = request_id
        self.request = request
        self.cancelled = False
        self._outbox = outbox
        self._registry = registry
        registry[request_id] = self

    def publish(self, event: Event) -> None:
        self._outbox.put(self.id, event)
        if isinstance(event, Finished):
            self._registry.pop(self.id, None)  # atomic: the reading thread may look it up


class _PipeOutbox:
    """A step's events for every request, sent as one message when the step ends."""

    def __init__(self, send: wire.Sender) -> None:
        self._send = send
        self._items: list[tuple[int, Event]] = []
        self.engine: BatchingEngine | None = None

    def put(self, request_id: int, event: Event) -> None:
        self._items.append((request_id, event))

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []
        engine = self.engine
        busy, waiting = (engine.busy_slots, engine.queue_depth) if engine else (0, 0)
        self._send((wire.EVENTS, items, busy, waiting))


def _exit_after_engine_bug() -> None:
    """The engine loop failed (logged) and its requests are told: end the process, so that the
    server sees an engine that died and loads the model again, instead of keeping an engine
    that refuses every request."""
    sys.stderr.flush()
    os._exit(ENGINE_BUG_STATUS)


def _inject_engine_bug(engine: BatchingEngine) -> None:
    """Fault injection for the tests: the engine's first step raises, as a bug in it would."""

    def step() -> None:
        raise RuntimeError("a bug injected by the tests (LMSERVE_FAULT_INJECTION=engine-bug)")

    engine._step = step  # type: ignore[method-assign]


class Worker:
    """The loaded model, its engine, and the handlers of the server's messages."""

    def __init__(self, spec: WorkerSpec, send: wire.Sender) -> None:
        self.spec = spec
        self._send = send
        crash_if_injected("load")
        offloaded = gpu_layers(spec.gpu, spec.n_layers)
        devices = None
        if spec.rpc_servers or spec.tensor_split:  # layers on RPC workers or several GPUs
            devices = placement.plan(spec.rpc_servers, spec.tensor_split)
            if spec.gpu == "auto":
                offloaded = -1  # all of them, as a GPU machine's "auto" does
        self.model = LlamaModel(
            spec.path,
            n_gpu_layers=offloaded,
            repack=spec.repack,
            tensor_split=devices.shares if devices is not None else (),
        )
        self.placement = (
            placement.describe(devices, spec.n_layers, offloaded, self.model.buffer_mib)
            if devices is not None
            else ()
        )
        self.flash_attention, self.flash_attention_reason = choose_flash_attention(
            spec.flash_attention
        )
        config = self.context_config(spec.n_ctx_per_slot)
        try:
            self.context = LlamaContext(self.model, config)
            if spec.self_check:
                # Not on this thread, which lives on: see in_passing_thread.
                in_passing_thread(self_check, self.model, config, spec.repack)
            projector = self._load_projector(offloaded)
        except Exception:
            self.model.close()
            raise
        if projector is not None and projector.mrope:
            # M-RoPE images hold more cells than positions, which the prompt cache's token
            # ranges do not describe: such models keep their prompts in their slots only.
            logger.info("%s: no prompt cache beyond the slots (M-RoPE projector)", spec.name)
            self.prompt_cache = None
        else:
            self.prompt_cache = self._start_prompt_cache(offloaded)
        self.outbox = _PipeOutbox(send)
        self.engine = BatchingEngine(
            self.model,
            self.context,
            n_slots=spec.n_slots,
            max_queue=spec.max_queue,
            name=spec.name,
            outbox=self.outbox,
            speculative=spec.speculative,  # type: ignore[arg-type]
            on_internal_error=_exit_after_engine_bug,
            prompt_cache=self.prompt_cache,
            projector=projector,
        )
        self.outbox.engine = self.engine
        # llguidance's view of the vocabulary takes up to seconds to build (a 262k vocabulary:
        # 1.5 s): built now, beside the first requests, rather than on the reading thread by
        # the first request with a grammar, which would hold up every other request's messages.
        threading.Thread(
            target=grammar_tokenizer, args=(self.model,), name="grammar-vocabulary", daemon=True
        ).start()
        if "engine-bug" in injected_faults():
            _inject_engine_bug(self.engine)
        self._requests: dict[int, _RemoteRequest] = {}
        self._calls = {
            "tokenize": self._tokenize,
            "tokenize_prompt": self._tokenize_prompt,
            "tokenize_images": self._tokenize_images,
            "detokenize": self._detokenize,
            "snapshot": self._snapshot,
            "clear_prompt_cache": self._clear_prompt_cache,
            "embed": self._embed,
            "load_draft": self._load_draft,
            "rerank": self._rerank,
        }
        self._embedder: Embedder | None = None
        self._reranker: Reranker | None = None
        self._embedding_lock = threading.Lock()  # one context: one input at a time
        self._draft_lock = threading.Lock()  # one draft model loads at a time
        model = self.model
        self.info = WorkerInfo(
            pid=os.getpid(),
            n_vocab=model.n_vocab,
            n_ctx_train=model.n_ctx_train,
            n_ctx_per_slot=self.engine.n_ctx_per_slot,
            n_embd=model.n_embd,
            add_bos=model.add_bos,
            bos_id=model.bos_id,
            eos_id=model.eos_id,
            bos_text=model.token_text(model.bos_id),
            eos_text=model.token_text(model.eos_id),
            chat_template=model.chat_template,
            architecture=model.architecture,
            fim_tokens=model.fim_tokens(),
            gpu_layers=offloaded,
            gpu_offload=gpu_offload_supported(),
            flash_attention=self.flash_attention,
            flash_attention_reason=self.flash_attention_reason,
            prompt_cache=self._prompt_cache_info(),
            vision=projector is not None,
            placement=self.placement,
        )

    def context_config(self, n_ctx_per_slot: int) -> ContextConfig:
        """The llama.cpp context settings of this worker's model (and of its draft model)."""
        spec = self.spec
        return ContextConfig(
            n_slots=spec.n_slots,
            n_ctx_per_slot=n_ctx_per_slot,
            n_batch=spec.n_batch,
            n_threads=spec.n_threads,
            flash_attention=self.flash_attention,
            type_k=spec.type_k,
            type_v=spec.type_v,
        )

    def _load_projector(self, gpu_layers: int) -> Projector | None:
        """The vision projector the spec names, beside the model; a load error if llama.cpp
        refuses it."""
        spec = self.spec
        if not spec.mmproj:
            return None
        try:
            # Not on this thread, which lives on (see in_passing_thread).
            return in_passing_thread(
                lambda: Projector(
                    spec.mmproj or "",
                    self.model,
                    marker=spec.media_marker,
                    n_threads=spec.n_threads or default_threads(),
                    use_gpu=gpu_layers != 0,
                )
            )
        except ImageError as exc:
            raise ModelLoadError(str(exc)) from None

    def _start_prompt_cache(self, gpu_layers: int) -> PromptCache | None:
        """The prompt cache beyond the slots, if asked for and this model's states are of a
        form it reads; its disk tier once the model's file is identified (at once when its
        hash is known from an earlier load, else from a thread that hashes it meanwhile)."""
        settings = self.spec.prompt_cache
        if settings is None:
            return None
        try:
            # Decodes a token: not on this thread, which lives on (see in_passing_thread).
            layout = in_passing_thread(probe_layout, self.context)
        except StateFormatError as exc:
            logger.warning("%s: no prompt cache beyond the slots: %s", self.spec.name, exc)
            return None
        cache = PromptCache(self.context, settings, layout)
        if settings.disk_folder:
            folder = Path(settings.disk_folder)
            if known_sha256(Path(self.spec.path), folder) is not None:
                self._attach_disk(cache, folder, gpu_layers)
            else:
                threading.Thread(
                    target=self._attach_disk,
                    args=(cache, folder, gpu_layers),
                    name="prompt-cache-identify",
                    daemon=True,
                ).start()
        return cache

    def _attach_disk(self, cache: PromptCache, folder: Path, gpu_layers: int) -> None:
        """Give ``cache`` its disk tier, keyed by everything that decides what a KV cell holds."""
        spec = self.spec
        try:
            sha256 = file_sha256(Path(spec.path), folder)
        except OSError as exc:
            logger.warning("%s: prompt cache kept in memory only: %s", spec.name, exc)
            return
        facts: dict[str, object] = {
            "gguf_sha256": sha256,
            "llama_cpp": llama_build(),
            "context_per_slot": self.context.n_ctx_per_slot,
            "batch": spec.n_batch,
            "type_k": spec.type_k,
            "type_v": spec.type_v,
            "flash_attention": self.flash_attention,
            "repack": spec.repack,
            "gpu_layers": gpu_layers,
            "swa_full": True,
        }
        description = {"model": spec.name, "path": spec.path, "settings": facts}
        cache.attach_disk(facts, description)

    def _prompt_cache_info(self) -> dict[str, Any] | None:
        cache = self.prompt_cache
        if cache is None:
            return None
        settings = cache.settings
        return {
            "memory_bytes": settings.memory_bytes,
            "disk_bytes": settings.disk_bytes if settings.disk_folder else 0,
            "disk_min_tokens": settings.disk_min_tokens,
        }

    # -- messages ------------------------------------------------------------------------------
    def serve(self, connection: Connection) -> None:
        """Handle messages until the server says close or goes away."""
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                return  # the server is gone: nobody to serve
            kind = message[0]
            if kind == wire.SUBMIT:
                self._submit(message[1], message[2])
            elif kind == wire.CANCEL:
                remote = self._requests.get(message[1])
                if remote is not None:
                    remote.cancelled = True
            elif kind == wire.CALL:
                self._call(message[1], message[2], message[3])
            elif kind == wire.CLOSE:
                self.engine.close(message[1])
                return

    def _submit(self, request_id: int, request: GenerationRequest) -> None:
        remote = _RemoteRequest(request_id, request, self.outbox, self._requests)
        try:
            self.engine.enqueue(remote)
        except EngineError as exc:
            # The server checks the queue bound itself; this is a grammar llama.cpp refused.
            self._requests.pop(request_id, None)
            refused = Finished.failure(request, str(exc), refused=isinstance(exc, ValueError))
            engine = self.engine
            self._send(
                (wire.EVENTS, [(request_id, refused)], engine.busy_slots, engine.queue_depth)
            )

    def _call(self, call_id: int, method: str, args: tuple[Any, ...]) -> None:
        if method in (
            "embed",
            "rerank",
            "load_draft",
            "tokenize_images",
        ):  # slow: off the reading thread
            # Beside generation (a context of its own), never on the reading thread, and in a
            # thread that ends afterwards (see in_passing_thread: a long-lived one would slow
            # every later decode).
            threading.Thread(
                target=self._answer,
                args=(call_id, self._calls[method], args),
                name="embed",
                daemon=True,
            ).start()
        else:
            self._answer(call_id, self._calls[method], args)

    def _answer(self, call_id: int, function: Any, args: tuple[Any, ...]) -> None:
        try:
            result = function(*args)
        except Exception as exc:  # raised again in the server, as if the call ran there
            try:
                self._send((wire.REPLY, call_id, False, exc))
            except Exception:  # an exception pickle cannot carry
                self._send(
                    (wire.REPLY, call_id, False, EngineError(f"{type(exc).__name__}: {exc}"))
                )
            return
        self._send((wire.REPLY, call_id, True, result))

    # -- calls ---------------------------------------------------------------------------------
    def _tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return self.model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def _tokenize_prompt(self, text: str) -> list[int]:
        return self.model.tokenize_prompt(text)

    def _tokenize_images(self, text: str, images: list[ImageInput]) -> TokenizedPrompt:
        projector = self.engine.projector
        if projector is None:
            raise ImageError("this model has no projector: it does not take images")
        return projector.tokenize(text, images, max_image_tokens=self.context.n_batch)

    def _detokenize(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens)

    def _snapshot(self) -> dict[str, Any]:
        cache = self.prompt_cache
        return {
            "slots": self.engine.slots(),
            "stats": asdict(self.engine.stats),
            "prompt_cache": cache.stats() if cache is not None else None,
        }

    def _clear_prompt_cache(self, memory: bool, disk: bool) -> dict[str, int]:
        cache = self.prompt_cache
        return cache.clear(memory, disk) if cache is not None else {}

    def _embed(self, token_lists: list[list[int]]) -> list[bytes]:
        with self._embedding_lock:
            if self._embedder is None:
                self._embedder = Embedder(
                    self.model, self.engine.n_ctx_per_slot, self.spec.n_threads
                )
            crash_if_injected("embed")
            embedder = self._embedder
            return [embedder.embed(tokens).astype("<f4").tobytes() for tokens in token_lists]

    def _rerank(self, query: str, documents: list[str]) -> list[tuple[float, int]]:
        """Each document's score against ``query`` and its pair's tokens (a reranker's)."""
        with self._embedding_lock:
            if self._reranker is None:
                self._reranker = Reranker(
                    self.model, self.engine.n_ctx_per_slot, self.spec.n_threads
                )
            return self._reranker.score(query, documents)

    def _load_draft(self, name: str, path: str) -> None:
        """Load a draft model for requests that name it, in place of the one loaded before;
        :class:`lmserve.engine.draft.DraftModelError` if its vocabulary is another."""
        with self._draft_lock:
            current = self.engine.draft_model
            if current is not None and (current.name, current.path) == (name, path):
                return
            spec = self.spec
            config = self.context_config(self.engine.n_ctx_per_slot)
            try:
                # Weight repacking as the self-check chose it for this CPU.
                draft = DraftModel(name, path, self.model, config, repack=spec.repack)
            except ModelLoadError as exc:  # its class lives beside llama.cpp: not for the server
                raise EngineError(f"the draft model did not load: {exc}") from None
            self.engine.install_draft(draft)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the server dies, however it dies.

    (Linux sends it when the server's thread that started us ends; the server starts
    workers from its event loop's executor threads, which live as long as the server.)
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the closed pipe still ends the worker


def _configure_logging(level: int) -> None:
    """Log records go to stderr in a form the server re-logs under the same logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(wire.LogLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str]) -> int:
    faulthandler.enable()  # a crash prints the Python stack to stderr, which the server logs
    _die_with_parent()
    # Ctrl-C in a terminal, or a service manager's SIGTERM, reaches the whole process group;
    # the server drains its requests first and then closes its engines itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    connection = Connection(int(argv[0]))
    spec: WorkerSpec = connection.recv()
    _configure_logging(spec.log_level)
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            connection.send(message)

    try:
        worker = Worker(spec, send)
    except (ModelLoadError, placement.PlacementError) as exc:
        send((wire.FAILED, str(exc), "load"))
        return 2
    except SelfCheckFailed as exc:
        send((wire.FAILED, str(exc), "self-check"))
        return 2
    send((wire.READY, worker.info))
    worker.serve(connection)
    return 0


if __name__ == "__main__":
    # os._exit: skip interpreter teardown, where llama.cpp's destructors have nothing to add.
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)
