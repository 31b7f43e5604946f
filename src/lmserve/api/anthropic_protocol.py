"""Pydantic models of Anthropic's Messages API requests (``POST /v1/messages``).

Bounds follow Anthropic's API reference (``temperature`` 0–1, ``max_tokens`` required);
unknown fields are ignored, so newer clients' options never break a request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmserve.api.generation import MAX_STOP_SEQUENCES
from lmserve.api.protocol import MAX_MESSAGES, MAX_TOKENS_CAP


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextBlock(_Request):
    type: Literal["text"]
    text: str


class MediaBlock(_Request):
    """Inputs the local text models cannot read: validated, then refused with a clear 400."""

    type: Literal["image", "document", "search_result"]


class ThinkingBlock(_Request):
    """An earlier answer's thinking, sent back by clients: accepted, and left out of the prompt."""

    type: Literal["thinking", "redacted_thinking"]


class ToolUseBlock(_Request):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=128)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_Request):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=200)
    content: str | list[Annotated[TextBlock | MediaBlock, Field(discriminator="type")]] = ""
    is_error: bool = False


ContentBlock = Annotated[
    TextBlock | MediaBlock | ThinkingBlock | ToolUseBlock | ToolResultBlock,
    Field(discriminator="type"),
]


class Message(_Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(_Request):
    # Client tools only: server tools (web search, code execution...) have other types.
    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=10_000)
    input_schema: dict[str, Any]


class ToolChoice(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _name_given(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("a 'name' is required when type is 'tool'")
        return self


class JsonOutputFormat(_Request):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Request):
    """Structured outputs: the answer is JSON matching ``format.schema``."""

    format: JsonOutputFormat | None = None


class CountTokensRequest(_Request):
    """What ``/v1/messages/count_tokens`` takes: a request without the sampling settings."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, le=MAX_TOKENS_CAP)
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    # lmserve's extensions, as on the OpenAI routes: a sampling seed (same seed, same
    # text) and how long a just-in-time loaded model stays.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    ttl: float | None = Field(default=None, gt=0, le=365 * 24 * 3600)
