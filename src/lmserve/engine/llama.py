"""A thin, typed layer over llama.cpp's C API (through ``llama_cpp``'s ctypes bindings).

We use the low-level API rather than ``llama_cpp.Llama``: the scheduler needs one context with
many sequences, per-sequence KV control and per-sequence sampler chains, none of which the
high-level class offers.  Everything here is a direct C call; nothing loops over the vocabulary.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import llama_cpp as C
import numpy as np

from lmserve.config import KV_CACHE_TYPES as KV_CACHE_NAMES

logger = logging.getLogger("lmserve.llama")

T = TypeVar("T")

_backend_lock = threading.Lock()
_backend_ready = False

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line.
# llama.cpp is chatty at info (every metadata key at load): that goes to our debug level.
_LLAMA_LOG_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_last_log_level = [logging.DEBUG]


# llama.cpp's lines "load_tensors:  RPC0[host:port] model buffer size =    40.12 MiB", one
# per buffer a model's weights went to, kept while a model loads (LlamaModel.buffer_mib).
_BUFFER_SIZE = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")
_load_lines: list[str] | None = None


@C.llama_log_callback
def _forward_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    if _load_lines is not None:
        _load_lines.append(text.decode("utf-8", errors="replace"))
    py_level = _LLAMA_LOG_LEVELS.get(level, _last_log_level[0])
    _last_log_level[0] = py_level
    if logger.isEnabledFor(py_level):
        message = text.decode("utf-8", errors="replace").rstrip()
        if message:
            logger.log(py_level, "%s", message)


def _ensure_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            C.llama_backend_init()
            C.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))
            _backend_ready = True


def default_threads() -> int:
    """All cores.  llama_cpp's own default is half of them, which halves speed on small boxes."""
    return max(1, os.cpu_count() or 1)


def llama_build() -> str:
    """The llama.cpp build and the CPU features it runs with: what else, besides the model
    and its settings, decides the bits a decode computes."""
    _ensure_backend()
    return (
        f"llama-cpp-python {C.__version__}; {C.llama_print_system_info().decode(errors='replace')}"
    )


def drop_doubled_bos(tokens: list[int], bos_id: int) -> list[int]:
    """Many templates write ``{{ bos_token }}`` and llama.cpp adds BOS too: keep one."""
    if len(tokens) >= 2 and tokens[0] == tokens[1] == bos_id:
        return tokens[1:]
    return tokens


def in_passing_thread(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` in a new thread that ends when it returns; its exception is raised.

    Why: llama.cpp computes with OpenMP, and OpenMP keeps a team of spinning-then-sleeping
    threads for every thread that ever ran a decode, for as long as that thread lives.  When
    the teams hold more threads than there are cores, libgomp stops spinning at its barriers
    and sleeps in the kernel at each of the graph's hundreds of barriers: a worker whose
    main thread had run the self-check decoded 20-23 ms a token instead of 16-17 (300 context
    switches a token instead of 1, default model, 2 cores).  So any decode other than the
    engine thread's runs in a thread that goes away, and its team with it.
    """
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, function(*args)))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=f"passing-{function.__name__}", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


class TokenSampler(Protocol):
    def sample(self, context: LlamaContext, row: int) -> int: ...


def gpu_offload_supported() -> bool:
    """Whether this machine has a GPU llama.cpp can use (CUDA, Metal, Vulkan...).  Not
    ``llama_supports_gpu_offload``, which says yes for any build with the RPC backend."""
    _ensure_backend()
    from lmserve.rpc.ggml import has_local_gpu

    return has_local_gpu()


class ModelLoadError(RuntimeError):
    """llama.cpp could not load the model file."""


class LlamaModel:
    """Weights and vocabulary of one GGUF model.  Thread-safe for tokenization."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_gpu_layers: int = 0,
        vocab_only: bool = False,
        repack: bool = True,
        tensor_split: Sequence[float] = (),
    ) -> None:
        """``repack``: let llama.cpp repack weights into its CPU-specific buffer types (AMX,
        AVX-512 layouts); off is ``llama-server --no-repack``.  ``tensor_split``: each
        device's share of the offloaded layers (empty: by free memory)."""
        global _load_lines
        _ensure_backend()
        self.path = Path(path)
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        params.use_extra_bufts = repack
        shares = (ctypes.c_float * C.LLAMA_MAX_DEVICES)(*tensor_split) if tensor_split else None
        if shares is not None:
            params.tensor_split = shares
        _load_lines = []
        try:
            model = C.llama_model_load_from_file(str(self.path).encode(), params)
        finally:
            lines, _load_lines = _load_lines, None
        # MiB of weights in each buffer ("CPU_Mapped", "RPC0[127.0.0.1:50052]", "CUDA0").
        self.buffer_mib: dict[str, float] = {}
        for line in lines:
            if found := _BUFFER_SIZE.search(line):
                name = found.group(1)
                self.buffer_mib[name] = self.buffer_mib.get(name, 0.0) + float(found.group(2))
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {self.path.name}")
        self._model = model
        self.vocab = C.llama_model_get_vocab(model)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = C.llama_model_n_ctx_train(model)
        self.n_embd = C.llama_model_n_embd(model)
        self.add_bos = bool(C.llama_vocab_get_add_bos(self.vocab))
        self.bos_id = C.llama_vocab_bos(self.vocab)
        self.eos_id = C.llama_vocab_eos(self.vocab)
        self._pieces: dict[int, bytes] = {}
        self._piece_buffer = ctypes.create_string_buffer(256)
        self._piece_lock = threading.Lock()
        architecture = self.metadata("general.architecture")
        self.architecture = architecture or "unknown"
        template = C.llama_model_chat_template(model, None)
        self.chat_template: str | None = template.decode("utf-8") if template else None

    @property
    def handle(self) -> C.llama_model_p:
        return self._model

    def token_text(self, token: int) -> str:
        """The vocabulary's text of ``token`` (special tokens included), e.g. ``<|im_end|>``."""
        if token < 0:
            return ""
        return C.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (C.llama_token * capacity)()
        count = C.llama_tokenize(
            self.vocab, data, len(data), buffer, capacity, add_special, parse_special
        )
        if count < 0:  # buffer too small: -count is the size needed
            capacity = -count
            buffer = (C.llama_token * capacity)()
            count = C.llama_tokenize(
                self.vocab, data, len(data), buffer, capacity, add_special, parse_special
            )
        return list(buffer[:count])

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokenize a rendered chat prompt: special tokens parsed, BOS added once at most."""
        tokens = self.tokenize(text, add_special=self.add_bos)
        return drop_doubled_bos(tokens, self.bos_id) if self.add_bos else tokens

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        with self._piece_lock:
            size = C.llama_token_to_piece(
                self.vocab, token, self._piece_buffer, len(self._piece_buffer), 0, False
            )
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = C.llama_token_to_piece(self.vocab, token, buffer, -size, 0, False)
                data = buffer.raw[:size]
            else:
                data = self._piece_buffer.raw[:size]
        self._pieces[token] = data
        return data

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(token) for token in tokens).decode("utf-8", errors="replace")

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """(prefix, suffix, middle) fill-in-the-middle tokens, if the vocabulary has them."""
        tokens = (
            C.llama_vocab_fim_pre(self.vocab),
            C.llama_vocab_fim_suf(self.vocab),
            C.llama_vocab_fim_mid(self.vocab),
        )
        return tokens if all(token >= 0 for token in tokens) else None

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))

    def metadata(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(4096)
        size = C.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        if size < 0:
            return None
        return buffer.value.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._model:
            C.llama_model_free(self._model)
            self._model = None


def choose_flash_attention(setting: str) -> tuple[bool | None, str]:
    """(flash attention on, off or ``None`` for llama.cpp's own choice; why) for a load.

    ``auto`` is llama.cpp's choice (on, for a CPU), not the faster one for every model: with
    it off, llama.cpp's CPU attention rounds a step of several tokens of one sequence
    differently from steps of one, so an answer would depend on how its prompt was split
    into steps (batched with others or alone, partly cached or not).
    """
    if setting == "auto":
        return None, "llama.cpp's choice"
    return setting == "on", f"set to {setting}"


# ggml's number for each KV cache type a load may ask for (lmserve.config.KV_CACHE_TYPES,
# which the server reads without loading llama.cpp).
KV_CACHE_TYPES = {name: getattr(C, f"GGML_TYPE_{name.upper()}") for name in KV_CACHE_NAMES}


@dataclass(frozen=True)
class ContextConfig:
    n_slots: int
    n_ctx_per_slot: int
    n_batch: int = 512
    n_threads: int = 0  # 0: all cores
    flash_attention: bool | None = None  # None: llama.cpp decides
    type_k: str = "f16"  # see KV_CACHE_TYPES
    type_v: str = "f16"


class LlamaContext:
    """One llama.cpp context holding ``n_slots`` independent sequences (seq ids 0..n-1)."""

    def __init__(self, model: LlamaModel, config: ContextConfig) -> None:
        params = C.llama_context_default_params()
        params.n_ctx = config.n_slots * config.n_ctx_per_slot
        params.n_seq_max = config.n_slots
        params.n_batch = config.n_batch
        params.n_ubatch = config.n_batch
        threads = config.n_threads or default_threads()
        params.n_threads = threads
        params.n_threads_batch = threads
        # A separate KV stream per sequence: attention only scans its own sequence's cells.
        params.kv_unified = False
        params.no_perf = True
        if config.flash_attention is not None:
            params.flash_attn_type = 1 if config.flash_attention else 0
        params.type_k = KV_CACHE_TYPES[config.type_k]
        params.type_v = KV_CACHE_TYPES[config.type_v]
        if config.type_v not in ("f16", "f32") and config.flash_attention is False:
            raise ModelLoadError(
                f"a {config.type_v} V cache needs flash attention, which this load turns off"
            )
        ctx = C.llama_init_from_model(model.handle, params)
        if not ctx:
            raise ModelLoadError("llama.cpp could not create a context (out of memory?)")
        self._ctx = ctx
        self.model = model
        self.n_batch = config.n_batch
        self.n_ctx_per_slot = C.llama_n_ctx_seq(ctx)
        # Sliding-window attention's window (0: none): such layers need only the cells of the
        # last n_swa positions, and a cache may have dropped older ones.
        self.n_swa = int(C.llama_model_n_swa(model.handle))
        self._memory = C.llama_get_memory(ctx)
        self._batch = C.llama_batch_init(config.n_batch, 0, 1)
        self.batch_size = 0

    @property
    def handle(self) -> C.llama_context_p:
        return self._ctx

    # -- batch building -------------------------------------------------------------------
    def clear_batch(self) -> None:
        self.batch_size = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token to the batch; returns its row index."""
        batch, i = self._batch, self.batch_size
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
        self.batch_size = i + 1
        return i

    def decode(self) -> int:
        """Run the model on the batch; llama.cpp's return code (0 ok, 1 no KV room, 2 aborted)."""
        self._batch.n_tokens = self.batch_size
        return C.llama_decode(self._ctx, self._batch)

    # -- KV cache ---------------------------------------------------------------------------
    def forget(self, seq: int, start: int = 0) -> bool:
        """Drop sequence ``seq``'s KV cells from position ``start`` on."""
        return bool(C.llama_memory_seq_rm(self._memory, seq, start, -1))

    def last_position(self, seq: int) -> int:
        """The highest position ``seq`` has a cell for (-1: none)."""
        return int(C.llama_memory_seq_pos_max(self._memory, seq))

    def window_start(self, length: int) -> int:
        """The first position whose cells sliding-window layers attend to when decoding
        position ``length`` (0 without such layers): llama.cpp masks a cell once it is
        ``n_swa`` positions behind."""
        return max(0, length - self.n_swa + 1) if self.n_swa > 0 else 0

    def copy_stream(self, source: int, target: int) -> None:
        """Replace ``target``'s KV stream by a copy of ``source``'s (done at the next decode).

        Between separate streams llama.cpp copies only whole streams, not position ranges.
        """
        C.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def clear(self) -> None:
        C.llama_memory_clear(self._memory, True)

    # -- outputs ------------------------------------------------------------------------------
    def sample(self, chain: TokenSampler, row: int) -> int:
        """The next token of the sequence whose logits are in ``row``, chosen by ``chain``."""
        return chain.sample(self, row)

    def logits(self, row: int) -> np.ndarray:
        """Row ``row`` of the last decode's logits: a read-only view, valid until the next
        decode (no copy of the vocabulary-sized vector)."""
        pointer = C.llama_get_logits_ith(self._ctx, row)
        view = np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,))
        view.flags.writeable = False
        return view

    def close(self) -> None:
        if self._ctx:
            C.llama_batch_free(self._batch)
            C.llama_free(self._ctx)
            self._ctx = None
