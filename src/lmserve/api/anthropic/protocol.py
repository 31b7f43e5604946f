"""Pydantic models of Anthropic's Messages API requests (``POST /v1/messages``).

Bounds follow Anthropic's API reference (``temperature`` 0–1, ``max_tokens`` required);
unknown fields are ignored, so newer clients' options never break a request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from lmserve.api.common import bounds
from lmserve.api.common.protocol import RequestModel


class TextBlock(RequestModel):
    type: Literal["text"]
    text: str


class MediaBlock(RequestModel):
    """Inputs the local text models cannot read: validated, then refused with a clear 400."""

    type: Literal["image", "document", "search_result"]


class ThinkingBlock(RequestModel):
    """An earlier answer's thinking, sent back by clients: accepted, and left out of the prompt."""

    type: Literal["thinking", "redacted_thinking"]


class ToolUseBlock(RequestModel):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=128)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(RequestModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=200)
    content: str | list[Annotated[TextBlock | MediaBlock, Field(discriminator="type")]] = ""
    is_error: bool = False


ContentBlock = Annotated[
    TextBlock | MediaBlock | ThinkingBlock | ToolUseBlock | ToolResultBlock,
    Field(discriminator="type"),
]


class Message(RequestModel):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(RequestModel):
    # Client tools only: server tools (web search, code execution...) have other types.
    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=10_000)
    input_schema: dict[str, Any]


class ToolChoice(RequestModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _name_given(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("a 'name' is required when type is 'tool'")
        return self


class JsonOutputFormat(RequestModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(RequestModel):
    """Structured outputs: the answer is JSON matching ``format.schema``."""

    format: JsonOutputFormat | None = None


class CountTokensRequest(RequestModel):
    """What ``/v1/messages/count_tokens`` takes: a request without the sampling settings."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1, max_length=bounds.MAX_MESSAGES)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: bounds.TokenLimit
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=bounds.MAX_STOP_SEQUENCES)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: bounds.TopK | None = None
    top_p: bounds.TopP | None = None
    # lmserve's extensions, as on the OpenAI routes: a sampling seed (same seed, same
    # text) and how long a just-in-time loaded model stays.
    seed: bounds.Seed | None = None
    ttl: bounds.TTL | None = None
