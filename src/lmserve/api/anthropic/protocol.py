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


class Base64Source(RequestModel):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class UrlSource(RequestModel):
    type: Literal["url"]
    url: str = Field(min_length=1)


class FileSource(RequestModel):
    """An image uploaded to Anthropic's Files API, which lmserve does not serve: refused."""

    type: Literal["file"]
    file_id: str = ""


class ImageBlock(RequestModel):
    """An image for a vision model: its bytes in base64, or a URL (see ``api/common/images``)."""

    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource | FileSource, Field(discriminator="type")]


class MediaBlock(RequestModel):
    """Inputs the local models cannot read: validated, then refused with a clear 400."""

    type: Literal["document", "search_result"]


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
    content: (
        str | list[Annotated[TextBlock | ImageBlock | MediaBlock, Field(discriminator="type")]]
    ) = ""
    is_error: bool = False


class McpToolUseBlock(RequestModel):
    """A call the server ran on an MCP server (an earlier answer's, sent back)."""

    type: Literal["mcp_tool_use"]
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=128)
    server_name: str = Field(min_length=1, max_length=64)
    input: dict[str, Any] = Field(default_factory=dict)


class McpToolResultBlock(RequestModel):
    type: Literal["mcp_tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=200)
    content: str | list[TextBlock] = ""
    is_error: bool = False


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | MediaBlock
    | ThinkingBlock
    | ToolUseBlock
    | ToolResultBlock
    | McpToolUseBlock
    | McpToolResultBlock,
    Field(discriminator="type"),
]


class Message(RequestModel):
    # "system" inside messages is not in Anthropic's reference, but Claude Code sends it:
    # its text joins the system prompt (see lmserve.api.anthropic.service.chat_messages).
    role: Literal["user", "assistant", "system"]
    content: list[ContentBlock] | str  # list first: a bad block is named in the error


class Tool(RequestModel):
    """A client tool (no type, or ``custom``); a server tool (``web_search_20250305``...) is
    accepted and left out, since only Anthropic's servers run those."""

    type: str | None = Field(default=None, max_length=64)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=bounds.MAX_DESCRIPTION)
    input_schema: dict[str, Any] | None = None

    @property
    def is_server_tool(self) -> bool:
        return self.type not in (None, "custom")

    @model_validator(mode="after")
    def _schema_given(self) -> Tool:
        if not self.is_server_tool and self.input_schema is None:
            raise ValueError("a client tool needs an 'input_schema'")
        return self


class McpToolConfiguration(RequestModel):
    enabled: bool = True
    allowed_tools: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=128
    )


class McpServer(RequestModel):
    """An MCP server the server connects to for this request (Anthropic's MCP connector)."""

    type: Literal["url"]
    url: str = Field(min_length=1, max_length=2000)
    name: str = Field(min_length=1, max_length=64)
    authorization_token: str | None = Field(default=None, max_length=8192)
    tool_configuration: McpToolConfiguration | None = None


class ThinkingConfig(RequestModel):
    """Extended thinking.  A reasoning model's thinking is always returned as ``thinking``
    blocks; the budget is not enforced apart from ``max_tokens``."""

    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=1, le=bounds.MAX_TOKENS_CAP)


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
    """Structured outputs: the answer is JSON matching ``format.schema``.  ``effort`` is
    accepted and has no effect on a local model."""

    effort: Literal["low", "medium", "high", "max"] | None = None
    format: JsonOutputFormat | None = None


class CountTokensRequest(RequestModel):
    """What ``/v1/messages/count_tokens`` takes: a request without the sampling settings."""

    model: str | None = Field(default=None, min_length=1)  # see GenerationRequestFields.model
    messages: list[Message] = Field(min_length=1, max_length=bounds.MAX_MESSAGES)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    @property
    def server_tools(self) -> list[str]:
        """The types of the server tools in ``tools``, which are left out."""
        return [str(tool.type) for tool in self.tools or [] if tool.is_server_tool]


class MessagesRequest(CountTokensRequest):
    # Above the model's context it is not an error: the answer ends where the context does
    # (stop_reason "max_tokens"), as Anthropic's API caps it at the model's output limit.
    max_tokens: bounds.TokenLimit
    # Accepted and ignored: a local server keeps no context edits (Claude Code sends it).
    context_management: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=bounds.MAX_STOP_SEQUENCES)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: bounds.TopK | None = None
    top_p: bounds.TopP | None = None
    # lmserve's extensions, as on the OpenAI routes: a sampling seed (same seed, same
    # text), how long a just-in-time loaded model stays, speculative decoding (see
    # GenerationRequestFields.speculative).
    seed: bounds.Seed | None = None
    ttl: bounds.TTL | None = None
    speculative: bool | None = None
    draft_model: str | None = Field(default=None, min_length=1)
    # The MCP connector (Anthropic's beta): servers whose tools the server runs.
    mcp_servers: list[McpServer] | None = Field(default=None, max_length=16)
    # lmserve's: rounds of MCP calls in one message (the server's --max-tool-rounds).
    max_tool_rounds: int | None = Field(default=None, ge=0, le=64)
