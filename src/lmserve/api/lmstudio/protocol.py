"""Pydantic models of LM Studio's native REST API: loading and downloading models, the v0
completions, and the stateful chat of ``/api/v1/chat``; fields in LM Studio's order."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from lmserve.api.common import bounds
from lmserve.api.common.protocol import ChatCompletionRequest, CompletionRequest, RequestModel
from lmserve.config import (
    MAX_SPLIT_DEVICES,
    check_gpu_setting,
    check_kv_cache_type,
    check_repack_setting,
    check_tensor_split,
    flash_attention_setting,
)
from lmserve.models.loader import LoadOptions
from lmserve.models.projectors import check_projector
from lmserve.rpc.probe import parse_endpoints

# -- v1: models ---------------------------------------------------------------------------------


class LoadConfig(RequestModel):
    context_length: bounds.ContextLength | None = None
    eval_batch_size: int | None = Field(default=None, ge=1, le=1 << 16)
    flash_attention: bool | None = None
    # lmserve's additions, also accepted at the top level of the request.
    parallel: int | None = Field(default=None, ge=1, le=64)
    ttl: bounds.TTL | None = None
    identifier: str | None = Field(default=None, min_length=1, max_length=200)
    gpu: str | None = None
    repack: str | None = None
    draft_model: str | None = Field(default=None, min_length=1)  # LM Studio's draftModel
    # The KV cache's type, keys and values alike (llama-server's -ctk/-ctv).
    kv_cache_type: str | None = None
    # A vision projector on the server's disk, in place of the model folder's (lmserve load
    # --mmproj); LM Studio's load has no such field.
    mmproj: str | None = Field(default=None, min_length=1, max_length=4096)
    # llama.cpp RPC workers holding the layers ("host:port,host:port" or a list), and each
    # device's share (lmserve load --rpc/--tensor-split; llama-server's --rpc).
    rpc: (
        Annotated[str, Field(max_length=4096)]
        | Annotated[list[Annotated[str, Field(max_length=300)]], Field(max_length=16)]
        | None
    ) = None
    tensor_split: list[Annotated[float, Field(ge=0, le=1e6)]] | None = Field(
        default=None, min_length=1, max_length=MAX_SPLIT_DEVICES
    )

    @field_validator("rpc")
    @classmethod
    def _rpc(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        text = value if isinstance(value, str) else ",".join(value)
        return list(parse_endpoints(text))

    @field_validator("tensor_split")
    @classmethod
    def _tensor_split(cls, value: list[float] | None) -> list[float] | None:
        return value if value is None else list(check_tensor_split(tuple(value)))

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, value: str | None) -> str | None:
        return value if value is None else check_gpu_setting(value)

    @field_validator("repack")
    @classmethod
    def _repack(cls, value: str | None) -> str | None:
        return value if value is None else check_repack_setting(value)

    @field_validator("kv_cache_type")
    @classmethod
    def _kv_cache_type(cls, value: str | None) -> str | None:
        return value if value is None else check_kv_cache_type(value)

    @field_validator("mmproj")
    @classmethod
    def _mmproj(cls, value: str | None) -> str | None:
        return value if value is None else str(check_projector(value))


class LoadRequest(LoadConfig):
    model: str = Field(min_length=1)
    config: LoadConfig | None = None

    def options(self) -> LoadOptions:
        merged = {**self.model_dump(exclude={"model", "config"}, exclude_none=True)}
        if self.config is not None:
            merged.update(self.config.model_dump(exclude_none=True))
        return LoadOptions(
            identifier=merged.get("identifier"),
            context_length=merged.get("context_length"),
            parallel=merged.get("parallel"),
            ttl=merged.get("ttl"),
            gpu=merged.get("gpu"),
            repack=merged.get("repack"),
            flash_attention=flash_attention_setting(merged.get("flash_attention")),
            draft_model=merged.get("draft_model"),
            kv_cache_type_k=merged.get("kv_cache_type"),
            kv_cache_type_v=merged.get("kv_cache_type"),
            mmproj=merged.get("mmproj"),
            rpc=tuple(merged["rpc"]) if merged.get("rpc") else None,
            tensor_split=tuple(merged["tensor_split"]) if merged.get("tensor_split") else None,
        )


class UnloadRequest(RequestModel):
    instance_id: str = Field(min_length=1)


class DownloadRequest(RequestModel):
    model: str = Field(min_length=1, max_length=500)
    quantization: str | None = Field(default=None, max_length=40)


# -- v1: chat -----------------------------------------------------------------------------------


class TextInput(RequestModel):
    type: Literal["message"]
    content: str


class ImageInput(RequestModel):
    """An image for a vision model: a ``data:`` URL (or http(s), where the server fetches)."""

    type: Literal["image"]
    data_url: str = Field(min_length=1)


InputObject = Annotated[TextInput | ImageInput, Field(discriminator="type")]

ToolNames = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=128)
]


class PluginIntegration(RequestModel):
    """A plugin by id: ``mcp/<name>`` is a server of mcp.json."""

    type: Literal["plugin"]
    id: str = Field(min_length=1, max_length=200)
    allowed_tools: ToolNames | None = None


class EphemeralMcpIntegration(RequestModel):
    """An MCP server named by URL for this request only."""

    type: Literal["ephemeral_mcp"]
    server_label: str = Field(min_length=1, max_length=64)
    server_url: str = Field(min_length=1, max_length=2000)
    allowed_tools: ToolNames | None = None
    headers: dict[str, Annotated[str, Field(max_length=8192)]] | None = Field(
        default=None, max_length=64
    )


def _integration_kind(value: Any) -> str:
    if isinstance(value, str):
        return "union:id"
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    # Anything else is named as a plugin object whose type is wrong.
    return "union:ephemeral_mcp" if kind == "ephemeral_mcp" else "union:plugin"


# Tagged so that a bad field is named ``integrations[0].id``, not by a union member's name.
Integration = Annotated[
    Annotated[Annotated[str, Field(min_length=1, max_length=200)], Tag("union:id")]
    | Annotated[PluginIntegration, Tag("union:plugin")]
    | Annotated[EphemeralMcpIntegration, Tag("union:ephemeral_mcp")],
    Discriminator(_integration_kind),
]


class NamedTool(RequestModel):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=128)


class NativeChatRequest(RequestModel):
    """The request fields in the order of LM Studio's reference."""

    model: str | None = Field(default=None, min_length=1)  # see GenerationRequestFields.model
    # The user's message: its text, or its text and images in order (a string is one text).
    input: list[InputObject] = Field(min_length=1, max_length=bounds.MAX_MESSAGES)
    system_prompt: str | None = None
    integrations: list[Integration] | None = Field(default=None, max_length=16)
    stream: bool = False
    temperature: bounds.Temperature | None = None
    top_p: bounds.TopP | None = None
    top_k: bounds.TopK | None = None
    min_p: bounds.MinP | None = None
    repeat_penalty: bounds.RepeatPenalty | None = None
    max_output_tokens: bounds.TokenLimit | None = None
    # The model decides how it reasons; accepted for clients that send it.
    reasoning: Literal["off", "low", "medium", "high", "on"] | None = None
    # Accepted; the context is the loaded model's (set it with `lmserve load --context-length`).
    context_length: bounds.ContextLength | None = None
    store: bool = True
    previous_response_id: bounds.ResponseId | None = None
    # lmserve's extensions, as on the other routes.
    seed: bounds.Seed | None = None
    ttl: bounds.TTL | None = None
    speculative: bool | None = None  # see GenerationRequestFields.speculative
    draft_model: str | None = Field(default=None, min_length=1)
    # lmserve's, for requests with integrations: a call forced in the first round (as
    # chat's tool_choice; a tool named by its name) and the rounds of calls in one answer.
    tool_choice: Literal["auto", "none", "required"] | NamedTool | None = None
    max_tool_rounds: int | None = Field(default=None, ge=0, le=64)

    @field_validator("input", mode="before")
    @classmethod
    def _string_input(cls, value: Any) -> Any:
        # A string is the message's text; as a list, a bad item is named by its index.
        if value == "":
            raise ValueError("the input is empty")
        return [{"type": "message", "content": value}] if isinstance(value, str) else value

    @field_validator("previous_response_id")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        # An empty id continues nothing: the thread starts afresh.
        return value or None


# -- v0 -----------------------------------------------------------------------------------------


def _v0_max_tokens(value: int | None) -> int | None:
    # LM Studio's own examples send -1 for "no limit".
    if value is not None and value < 0:
        if value != -1:
            raise ValueError("max_tokens must be -1 (no limit) or at least 1")
        return None
    return value


class V0ChatRequest(ChatCompletionRequest):
    max_tokens: int | None = Field(default=None, ge=-1, le=bounds.MAX_TOKENS_CAP)

    @field_validator("max_tokens")
    @classmethod
    def _no_limit(cls, value: int | None) -> int | None:
        return _v0_max_tokens(value)


class V0CompletionRequest(CompletionRequest):
    max_tokens: int | None = Field(default=16, ge=-1, le=bounds.MAX_TOKENS_CAP)

    @field_validator("max_tokens")
    @classmethod
    def _no_limit(cls, value: int | None) -> int | None:
        return _v0_max_tokens(value)
