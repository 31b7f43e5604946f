"""LM Studio's KV config stacks: what a prediction or a load asks for, and what was used.

A stack is layers of ``{key, value}`` fields, the later layer winning (``apiOverride`` from the
SDK call, then ``completeModeFormatting`` for a text completion).  Prediction keys become the
fields of a chat (or text) completion request, whose bounds then apply as on every surface;
load keys become :class:`LoadOptions`.  Keys lmserve has no use for (the draft length
settings of speculative decoding, CPU threads, reasoning parsing, context overflow
policy...) are accepted and ignored.  A
checkbox value is ``{"checked", "value"}``; unchecked means the setting is off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmserve.api.common.generation import Prepared
from lmserve.api.common.protocol import ChatMessage
from lmserve.api.lmstudio_ws.errors import SDKError
from lmserve.api.lmstudio_ws.protocol import KvStack
from lmserve.config import (
    KV_CACHE_TYPES,
    check_gpu_setting,
    check_kv_cache_type,
    flash_attention_setting,
)
from lmserve.models.loader import LoadedModel, LoadOptions

PREDICTION = "llm.prediction."


def flatten(stack: KvStack) -> dict[str, Any]:
    """The stack's fields, later layers overriding earlier ones."""
    return {item.key: item.value for layer in stack.layers for item in layer.config.fields}


def _bad(key: str, expected: str, value: Any) -> SDKError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:79] + "…"
    return SDKError(f"Invalid config value for '{key}': expected {expected}, got {shown}.")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, "a number", value)
    return float(value)


def _checkbox(key: str, value: Any) -> float | None:
    """A checkbox's number, or None when it is unchecked."""
    if not isinstance(value, dict) or "checked" not in value:
        raise _bad(key, '{"checked": bool, "value": number}', value)
    if not value["checked"]:
        return None
    return _number(key, value.get("value"))


@dataclass
class Prediction:
    """A prediction's settings: chat request fields, and what a chat request cannot say."""

    fields: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None
    gbnf: str | None = None  # a grammar of the client's own
    json_schema: dict[str, Any] | None = None  # as response_format, for a raw prompt too
    template: dict[str, Any] | None = None  # a prompt template: the prompt is raw text
    template_stops: list[str] = field(default_factory=list)


def prediction(config: dict[str, Any]) -> Prediction:
    """Read the ``llm.prediction.*`` keys of a flattened stack."""
    result = Prediction()
    out = result.fields

    def get(name: str) -> Any:
        return config.get(PREDICTION + name)

    if (value := get("temperature")) is not None:
        out["temperature"] = _number(PREDICTION + "temperature", value)
    if (value := get("topKSampling")) is not None:
        out["top_k"] = max(0, int(_number(PREDICTION + "topKSampling", value)))
    for name, target, off in (
        ("topPSampling", "top_p", 1.0),
        ("minPSampling", "min_p", 0.0),
        ("repeatPenalty", "repeat_penalty", 1.0),
        ("llama.presencePenalty", "presence_penalty", 0.0),
        ("llama.frequencyPenalty", "frequency_penalty", 0.0),
    ):
        if (value := get(name)) is not None:
            number = _checkbox(PREDICTION + name, value)
            out[target] = off if number is None else number
    if out.get("repeat_penalty", 1.0) <= 0:
        out["repeat_penalty"] = 1.0  # LM Studio's -1: off
    if (value := get("maxPredictedTokens")) is not None:
        limit = _checkbox(PREDICTION + "maxPredictedTokens", value)
        out["max_tokens"] = int(limit) if limit is not None and limit >= 1 else None
    if (value := get("seed")) is not None:
        seed = _checkbox(PREDICTION + "seed", value)
        out["seed"] = int(seed) if seed is not None and seed >= 0 else None
    if (value := get("stopStrings")) is not None:
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise _bad(PREDICTION + "stopStrings", "a list of strings", value)
        out["stop"] = value or None
    if isinstance(draft := get("speculativeDecoding.draftModel"), str) and draft:
        out["draft_model"] = draft
    _structured(get("structured"), result)
    _tools(get("tools"), result)
    if isinstance(system := get("systemPrompt"), str) and system.strip():
        result.system_prompt = system
    _template(get("promptTemplate"), result)
    return result


def _structured(value: Any, result: Prediction) -> None:
    key = PREDICTION + "structured"
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in {"none", "json", "gbnf"}:
        raise _bad(key, '{"type": "none" | "json" | "gbnf", ...}', value)
    if value["type"] == "json":
        schema = value.get("jsonSchema")
        if not isinstance(schema, dict):
            raise _bad(key + ".jsonSchema", "a JSON schema object", schema)
        result.json_schema = schema
        result.fields["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema},
        }
    elif value["type"] == "gbnf":
        grammar = value.get("gbnfGrammar")
        if not isinstance(grammar, str) or not grammar.strip():
            raise _bad(key + ".gbnfGrammar", "a GBNF grammar", grammar)
        result.gbnf = grammar


def _tools(value: Any, result: Prediction) -> None:
    key = PREDICTION + "tools"
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in {"none", "toolArray"}:
        raise _bad(key, '{"type": "none" | "toolArray", ...}', value)
    tools = value.get("tools") or []
    if value["type"] == "none" or not tools:
        return
    if not isinstance(tools, list):
        raise _bad(key + ".tools", "a list of tools", tools)
    result.fields["tools"] = tools
    result.fields["tool_choice"] = "required" if value.get("force") else "auto"


def _template(value: Any, result: Prediction) -> None:
    key = PREDICTION + "promptTemplate"
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in {"jinja", "manual"}:
        raise _bad(key, '{"type": "jinja" | "manual", ...}', value)
    inner = value.get("jinjaPromptTemplate" if value["type"] == "jinja" else "manualPromptTemplate")
    if not isinstance(inner, dict):
        raise _bad(key, f"the {value['type']} template's settings", inner)
    result.template = {"type": value["type"], **inner}
    stops = value.get("stopStrings") or []
    result.template_stops = [stop for stop in stops if isinstance(stop, str) and stop]


def with_system_prompt(messages: list[ChatMessage], system: str | None) -> list[ChatMessage]:
    """The config's system prompt first, unless the history brings its own."""
    if system is None or any(message.role == "system" for message in messages):
        return messages
    return [ChatMessage(role="system", content=system), *messages]


# -- loads ------------------------------------------------------------------------------------


def load_options(
    config: dict[str, Any], domain: str, *, identifier: str | None, ttl_ms: int | None
) -> LoadOptions:
    """The ``<domain>.load.*`` keys lmserve honours: context length, GPU offload and flash
    attention."""
    prefix = f"{domain}.load."
    context = config.get(prefix + "contextLength")
    if context is not None:
        context = int(_number(prefix + "contextLength", context))
        if not 64 <= context <= 1 << 20:
            raise _bad(prefix + "contextLength", "a number of tokens from 64 to 1048576", context)
    gpu = config.get(prefix + "llama.acceleration.offloadRatio")
    if gpu is not None:
        try:
            gpu = check_gpu_setting(str(gpu))
        except ValueError as exc:
            raise _bad(
                prefix + "llama.acceleration.offloadRatio", '"max", "off" or 0-1', gpu
            ) from exc
    flash_attention = config.get(prefix + "llama.flashAttention")
    if flash_attention is not None and not isinstance(flash_attention, bool):
        raise _bad(prefix + "llama.flashAttention", "true or false", flash_attention)
    return LoadOptions(
        identifier=identifier,
        context_length=context,
        ttl=ttl_ms / 1000 if ttl_ms is not None else None,
        gpu=gpu,
        flash_attention=flash_attention_setting(flash_attention),
        kv_cache_type_k=_cache_type(config, prefix + "llama.kCacheQuantizationType"),
        kv_cache_type_v=_cache_type(config, prefix + "llama.vCacheQuantizationType"),
    )


def _cache_type(config: dict[str, Any], key: str) -> str | None:
    """A K or V cache quantization, a checkbox field (``{"checked", "value"}``): the type
    when checked, else ``None`` (the server's)."""
    field = config.get(key)
    if field is None:
        return None
    if not isinstance(field, dict) or not isinstance(field.get("checked", False), bool):
        raise _bad(key, '{"checked": true, "value": "q8_0"}', field)
    if not field.get("checked"):
        return None
    try:
        return check_kv_cache_type(str(field.get("value")))
    except ValueError as exc:
        raise _bad(key, "one of " + ", ".join(KV_CACHE_TYPES), field.get("value")) from exc


def load_config(model: LoadedModel, domain: str) -> dict[str, Any]:
    """What ``getLoadConfig`` and a prediction's result report: the load as it is."""
    prefix = f"{domain}.load."
    gpu = str(model.config.get("gpu", "auto"))
    fields: list[dict[str, Any]] = [
        {"key": prefix + "contextLength", "value": model.n_ctx},
        {"key": prefix + "llama.evalBatchSize", "value": model.config.get("eval_batch_size")},
        {"key": prefix + "llama.flashAttention", "value": model.config.get("flash_attention")},
        *(
            {
                "key": prefix + f"llama.{part}CacheQuantizationType",
                "value": {"checked": True, "value": kind},
            }
            for part, kind in (
                ("k", model.config.get("kv_cache_type_k")),
                ("v", model.config.get("kv_cache_type_v")),
            )
            if kind is not None
        ),
    ]
    if gpu != "auto":
        ratio: Any = float(gpu) if gpu not in {"max", "off"} else gpu
        fields.append({"key": prefix + "llama.acceleration.offloadRatio", "value": ratio})
    return {"fields": [item for item in fields if item["value"] is not None]}


def prediction_config(prepared: Prepared, structured: Any) -> dict[str, Any]:
    """What a prediction's result reports: the settings it was sampled with."""
    sampling = prepared.sampling
    limit = prepared.max_tokens
    fields: list[tuple[str, Any]] = [
        ("temperature", sampling.temperature),
        ("topKSampling", sampling.top_k),
        ("topPSampling", {"checked": sampling.top_p < 1.0, "value": sampling.top_p}),
        ("minPSampling", {"checked": sampling.min_p > 0.0, "value": sampling.min_p}),
        (
            "repeatPenalty",
            {"checked": sampling.repeat_penalty != 1.0, "value": sampling.repeat_penalty},
        ),
        ("maxPredictedTokens", {"checked": limit is not None, "value": limit or 1}),
        ("stopStrings", list(prepared.stop)),
    ]
    if sampling.seed is not None:
        fields.append(("seed", {"checked": True, "value": sampling.seed}))
    if structured is not None:
        fields.append(("structured", structured))
    return {"fields": [{"key": PREDICTION + name, "value": value} for name, value in fields]}
