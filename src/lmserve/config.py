"""Server settings, gathered from the command line into one immutable object."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1234
DEFAULT_CONTEXT_LENGTH = 4096  # per slot, as LM Studio's default
DEFAULT_JIT_TTL = 60 * 60.0  # LM Studio unloads an idle JIT-loaded model after 60 minutes
DEFAULT_MAX_BODY_SIZE = 32 * 2**20  # bytes: a 4k-token chat is a few dozen KiB, a photo as
# base64 a few MiB: room for several images in one request
# Seconds SIGTERM waits for requests in flight; below `lmserve server stop`'s 30 s patience.
DEFAULT_DRAIN_TIMEOUT = 20.0
# The loopback ports LM Studio's SDKs (1.5.0) try in turn when given no host; the server also
# listens on the first free one, so that `lms.llm()` finds it (--sdk-port).
SDK_DISCOVERY_PORTS = (41343, 52993, 16141, 39414, 22931)


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget() -> int | None:
    """Three quarters of the machine's memory for model weights and KV caches."""
    total = physical_memory()
    return int(total * 0.75) if total else None


GPU_SETTINGS_HELP = "auto, off, max, or a fraction 0-1 of the layers"


def check_gpu_setting(value: str) -> str:
    """``value`` if it is a GPU offload setting (auto, off, max, 0..1), else ``ValueError``."""
    if value in {"auto", "off", "max"}:
        return value
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the GPU setting must be {GPU_SETTINGS_HELP}, not {value!r}")
    return value


MAX_SPLIT_DEVICES = 16  # llama.cpp's LLAMA_MAX_DEVICES


def parse_tensor_split(text: str) -> tuple[float, ...]:
    """``--tensor-split 3,1``: each device's share of the layers (RPC workers in ``--rpc``
    order, then local GPUs), as llama-server takes it; raises ``ValueError``."""
    try:
        shares = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            f"--tensor-split takes numbers separated by commas, not {text!r}"
        ) from None
    check_tensor_split(shares)
    return shares


def check_tensor_split(shares: tuple[float, ...]) -> tuple[float, ...]:
    if not 0 < len(shares) <= MAX_SPLIT_DEVICES:
        raise ValueError(f"a tensor split has 1 to {MAX_SPLIT_DEVICES} shares")
    if any(not 0 <= share <= 1e6 for share in shares) or not any(shares):
        raise ValueError("each share of a tensor split is 0 to 1000000, and one is above 0")
    return shares


REPACK_SETTINGS = ("auto", "on", "off")
REPACK_HELP = (
    "Let llama.cpp repack weights for this CPU: auto (a self-check decides, and the verdict "
    "is cached), on, or off (llama-server's --no-repack)."
)


def check_repack_setting(value: str) -> str:
    """``value`` if it is a repack setting (auto, on, off), else ``ValueError``."""
    if value not in REPACK_SETTINGS:
        raise ValueError(f"the repack setting must be auto, on or off, not {value!r}")
    return value


FLASH_ATTENTION_SETTINGS = ("auto", "on", "off")
FLASH_ATTENTION_HELP = (
    "llama.cpp's flash attention: auto (llama.cpp decides: on, for a CPU), on, or off (on a "
    "CPU, up to 2.8x faster per token at long contexts for models with narrow attention "
    "heads, such as the default model, but greedy answers may then differ with batching "
    "and prompt caching)."
)


def flash_attention_setting(enabled: bool | None) -> str | None:
    """The setting for LM Studio's boolean ``flash_attention``: on, off, or ``None`` (unsaid)."""
    return None if enabled is None else ("on" if enabled else "off")


SPECULATIVE_SETTINGS = ("auto", "on", "off")
SPECULATIVE_HELP = (
    "Speculative decoding by prompt lookup: auto (draft from the text so far where the "
    "measured acceptance rate and the load say it pays), on (whenever the text offers a "
    "draft), or off."
)


# KV cache types a load may set (llama-server's -ctk/-ctv, LM Studio's K and V cache
# quantization): a quantized cache holds more tokens in the same memory.  A quantized V cache
# needs flash attention.
KV_CACHE_TYPES = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
KV_CACHE_TYPE_HELP = (
    "Type of the KV cache's keys and values: f16 (the default), q8_0 (half the memory; "
    "answers may differ slightly), q4_0, or another of "
    + ", ".join(KV_CACHE_TYPES)
    + ". A quantized V cache needs flash attention."
)
# Bytes per element, for memory estimates (a q8_0 block is 32 values in 34 bytes...).
KV_CACHE_TYPE_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}


def check_kv_cache_type(value: str) -> str:
    """``value`` if it is a KV cache type, else ``ValueError``."""
    if value not in KV_CACHE_TYPES:
        raise ValueError(
            f"the KV cache type must be one of {', '.join(KV_CACHE_TYPES)}, not {value!r}"
        )
    return value


def available_memory() -> int | None:
    """Memory the system could give now without swapping (``MemAvailable``)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory()


PROMPT_CACHE_RAM_CAP = 8 * 2**30  # llama-server's --cache-ram default
PROMPT_CACHE_DISK_DEFAULT = 4 * 2**30
PROMPT_CACHE_DISK_MIN_TOKENS = 1024


def default_prompt_cache_ram() -> int:
    """Each model's memory tier: an eighth of the memory available at start, at most 8 GiB
    (llama-server keeps 8 GiB of prompt states by default)."""
    available = available_memory() or 8 * 2**30
    return min(PROMPT_CACHE_RAM_CAP, available // 8)


@dataclass(frozen=True)
class PromptCacheConfig:
    """The prompt cache beyond the slots (lmserve.engine.prompt_cache), per loaded model:
    its memory tier's budget and the disk tier's (shared by every model's files)."""

    enabled: bool = True
    memory_bytes: int | None = None  # None: default_prompt_cache_ram()
    disk_bytes: int = PROMPT_CACHE_DISK_DEFAULT
    disk_min_tokens: int = PROMPT_CACHE_DISK_MIN_TOKENS  # shorter states stay in memory only


@dataclass(frozen=True)
class PredictionDefaults:
    """What a request that leaves a sampling setting out gets: LM Studio's defaults, unless
    the server is told others (as llama-server's ``--temp``, ``--top-k``... and a model's
    preset in LM Studio are)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int | None = None  # None: until the model ends its turn or the context is full
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: a new random seed for each request

    def describe(self) -> dict[str, object]:
        """The settings that differ from LM Studio's, for the log and the native models API."""
        return {
            name: value
            for name, value in vars(self).items()
            if value != getattr(_LM_STUDIO_PREDICTION, name)
        }


_LM_STUDIO_PREDICTION = PredictionDefaults()


@dataclass(frozen=True)
class ModelDefaults:
    """How models are loaded when a load does not say otherwise."""

    context_length: int = DEFAULT_CONTEXT_LENGTH  # tokens per slot
    parallel: int = 4  # slots per model: LM Studio's "max concurrent predictions"
    max_queue: int = 64  # requests waiting for a slot, beyond which we answer 503
    threads: int = 0  # 0: all cores
    batch_size: int = 512
    # GPU offload: "auto" puts every layer on the GPU when llama.cpp was built with one.
    gpu: str = "auto"
    repack: str = "auto"  # see REPACK_HELP
    flash_attention: str = "auto"  # see FLASH_ATTENTION_HELP
    speculative: str = "auto"  # see SPECULATIVE_HELP
    kv_cache_type_k: str = "f16"  # see KV_CACHE_TYPES
    kv_cache_type_v: str = "f16"
    prompt_cache: PromptCacheConfig = PromptCacheConfig()
    prediction: PredictionDefaults = PredictionDefaults()
    # llama.cpp RPC workers (host:port) that hold layers of every model (serve --rpc), and
    # each device's share of them (--tensor-split; empty: by free memory).
    rpc: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()


@dataclass(frozen=True)
class ImageLimits:
    """What the server takes of images for vision models (``lmserve serve`` flags)."""

    allow_urls: bool = False  # fetch http(s) image URLs (--allow-image-urls)
    max_bytes: int = 20 * 2**20  # per image, as sent (--max-image-size)
    max_pixels: int = 50_000_000  # per image, width x height (--max-image-pixels)
    max_images: int = 16  # per request (--max-images)
    url_timeout: float = 10.0  # seconds to fetch one image URL


@dataclass(frozen=True)
class McpSettings:
    """Which MCP servers API requests may use, and the time limits of their calls."""

    allow_urls: bool = False  # servers a request names by URL (--allow-mcp-urls)
    allow_config: bool = False  # servers of mcp.json, by name (--allow-mcp-json)
    connect_timeout: float = 10.0  # seconds to connect and list tools (--mcp-connect-timeout)
    call_timeout: float = 60.0  # seconds for one call's result (--mcp-call-timeout)
    max_tool_rounds: int = 8  # rounds of calls in one turn, unless a request says


@dataclass(frozen=True)
class RaySettings:
    """``--ray``: the cluster to join, and how many Serve replicas each loaded model gets."""

    address: str = "auto"  # "auto": RAY_ADDRESS, or the local `ray start --head`
    replicas: int | None = 1  # None: autoscaled (--replicas auto)
    max_replicas: int = 4  # the most an autoscaled model gets
    # "prefix": PrefixAffinityRouter; "random": RandomRouter, the benchmark's baseline
    routing: str = "prefix"
    # Names this server's Serve applications (lmserve-<port>-<model>): servers sharing a
    # cluster never replace each other's; one restarted on its port takes its own back.
    server_port: int = 0


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model: str | None = None  # the model to load at start; None: the default model
    draft_model: str | None = None  # the start model's draft model (speculative decoding)
    mmproj: str | None = None  # the start model's vision projector, if not its folder's
    load_at_start: bool = True
    models: ModelDefaults = ModelDefaults()
    jit: bool = True  # load a downloaded model when a request names it
    jit_ttl: float = DEFAULT_JIT_TTL  # idle seconds before a JIT-loaded model is unloaded
    # LM Studio's JIT auto-evict: a model loaded just in time unloads the other models loaded
    # just in time (--no-jit-auto-evict keeps them)
    jit_auto_evict: bool = True
    max_loaded_models: int | None = None
    max_memory: int | None = None  # bytes for all loaded models; None: 3/4 of the machine
    fetch_default_model: bool = True
    cors_origins: tuple[str, ...] = ()  # () : no CORS headers; ("*",): any origin
    # Keys a request must present (Authorization: Bearer, or x-api-key); (): any key will do.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback ones
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    images: ImageLimits = ImageLimits()
    mcp: McpSettings = McpSettings()
    # Seconds an LM Studio plugin has for each answer (a tool's result, a preprocessed
    # message, its generator's next fragment) before the prediction waiting on it fails.
    plugin_timeout: float = 60.0
    ray: RaySettings | None = None  # None: one machine, and Ray is never imported
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    webui: bool = True  # the chat page at / (api/webui); --no-webui turns it off
    # The loopback port LM Studio's SDKs discover: "auto" (the first free of
    # SDK_DISCOVERY_PORTS), a port, or None (off).
    sdk_port: int | str | None = "auto"
