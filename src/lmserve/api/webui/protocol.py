"""What the page sends to ``/lmserve/conversations``, and the export file's format.

A conversation is a tree of messages: editing a message or regenerating an answer adds a
sibling (a branch) rather than changing what was said, so every message is written once and
never rewritten. ``current_leaf`` is the message whose path from the root the page shows.

Unknown fields are refused here (unlike the OpenAI-shaped surfaces): this API has one client,
our page, and an export file from a future lmserve should fail loudly, not lose fields.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from lmserve.api.common import bounds
from lmserve.api.webui.images import MAX_DATA_URL, MAX_IMAGES

MAX_TITLE = 200
MAX_TEXT = 1_000_000  # characters of one message, or the system prompt
MAX_JSON_TEXT = 200_000  # the tools or the JSON schema, as the user typed them
MAX_ID = 64
MAX_MESSAGES = 10_000  # per conversation
MAX_IMPORTED = 1_000  # conversations per import
EXPORT_FORMAT = "lmserve.conversations"
EXPORT_VERSION = 3  # 2: a user message may hold images; 3: an answer, MCP calls
MAX_MCP_SERVERS = 32  # switched on in one conversation
MAX_MCP_CALLS = 256  # of one answer

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID, pattern=r"^[A-Za-z0-9_.:-]+$")]
ImageId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # SHA-256 of its bytes, in hex
Title = Annotated[str, Field(max_length=MAX_TITLE)]
Role = Literal["system", "user", "assistant", "tool"]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Timestamp = Annotated[float, Field(ge=0, le=1e11)]  # seconds since 1970 (to the year 5138)
# A server of mcp.json, by name (mcp/config.py's LABEL_PATTERN).
McpServerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


def _json_only(value: Any) -> Any:
    """JSON's values only: Python's parser takes NaN and Infinity, which no answer may hold."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise ValueError("NaN and Infinity are not JSON numbers") from None
    return value


JsonOnly = AfterValidator(_json_only)


class WebModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatSettings(WebModel):
    """The settings of a conversation: the seed's request parameters (``messages`` is the
    conversation itself), the system prompt, and two advanced ones. ``None``: the server's
    default."""

    model: str | None = Field(default=None, max_length=256)
    system_prompt: str | None = Field(default=None, max_length=MAX_TEXT)
    temperature: bounds.Temperature | None = None
    top_p: bounds.TopP | None = None
    top_k: bounds.TopK | None = None
    max_tokens: bounds.TokenLimit | None = None
    stream: bool = True
    stop: list[Annotated[str, Field(max_length=bounds.MAX_STOP_LENGTH)]] = Field(
        default_factory=list, max_length=bounds.MAX_STOP_SEQUENCES
    )
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] = Field(
        default_factory=dict, max_length=bounds.MAX_LOGIT_BIAS
    )
    repeat_penalty: bounds.RepeatPenalty | None = None
    seed: bounds.Seed | None = None
    # JSON text as typed (the page checks it parses before sending): a tools array, and the
    # JSON schema of a structured answer.
    tools: str | None = Field(default=None, max_length=MAX_JSON_TEXT)
    response_format: str | None = Field(default=None, max_length=MAX_JSON_TEXT)
    # "auto", "none", "required", or the name of a tool the model must call (the first round's
    # only, with MCP servers).
    tool_choice: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    # mcp.json's servers switched on for this conversation: answers then come from
    # /v1/responses, which offers their tools to the model and runs its calls.
    mcp_servers: list[McpServerName] = Field(default_factory=list, max_length=MAX_MCP_SERVERS)


class NewImage(WebModel):
    """An image of a user message: its data (a ``data:`` URL, checked by ``images.py``), or
    the id of one the conversation already holds (an edited message keeps its images)."""

    url: str | None = Field(default=None, max_length=MAX_DATA_URL)
    id: ImageId | None = None

    @model_validator(mode="after")
    def _one(self) -> NewImage:
        if (self.url is None) == (self.id is None):
            raise ValueError("an image has either its data (url) or an id")
        return self


class McpCall(WebModel):
    """A call the server ran for an answer, as the Responses ``mcp_call`` item said it."""

    id: str | None = Field(default=None, max_length=200)
    server_label: str = Field(max_length=64)
    name: str = Field(max_length=128)
    arguments: str = Field(default="", max_length=MAX_TEXT)
    output: str | None = Field(default=None, max_length=MAX_TEXT)
    error: str | None = Field(default=None, max_length=MAX_TEXT)
    status: str | None = Field(default=None, max_length=32)


class NewMessage(WebModel):
    """A message to add under ``parent_id`` (``None``: a first message). A user message may
    hold images, which go to the model before its text."""

    parent_id: Id | None = None
    role: Role
    content: str = Field(default="", max_length=MAX_TEXT)
    reasoning_content: str | None = Field(default=None, max_length=MAX_TEXT)
    # As the chat API returned them: [{"id", "type": "function", "function": {...}}].
    tool_calls: Annotated[list[dict[str, Any]] | None, JsonOnly] = Field(
        default=None, max_length=128
    )
    # The MCP calls the server ran for this answer, in order (they came before its text).
    mcp_calls: list[McpCall] | None = Field(default=None, max_length=MAX_MCP_CALLS)
    # What the page learnt of the answer: model, request id, stats, the rendered prompt.
    meta: Annotated[dict[str, Any], JsonOnly] = Field(default_factory=dict)
    images: list[NewImage] = Field(default_factory=list, max_length=MAX_IMAGES)

    @model_validator(mode="after")
    def _what_each_role_holds(self) -> NewMessage:
        if self.images and self.role != "user":
            raise ValueError("only a user message holds images")
        if self.mcp_calls and self.role != "assistant":
            raise ValueError("only an answer holds MCP calls")
        return self


class StoredMessage(NewMessage):
    """A message as exported: with its id and when it was written."""

    id: Id
    created_at: Timestamp


class NewConversation(WebModel):
    title: Title = "New chat"
    settings: ChatSettings = Field(default_factory=ChatSettings)


class ConversationUpdate(WebModel):
    """Rename, change the settings, or switch branches (``current_leaf``); absent: unchanged."""

    title: Title | None = None
    settings: ChatSettings | None = None
    current_leaf: Id | None = None


class ExportedConversation(WebModel):
    id: Id
    title: Title
    settings: ChatSettings = Field(default_factory=ChatSettings)
    current_leaf: Id | None = None
    created_at: Timestamp
    updated_at: Timestamp
    # Parents before children (an export lists them in the order they were written).
    messages: list[StoredMessage] = Field(default_factory=list, max_length=MAX_MESSAGES)


class ExportFile(WebModel):
    """``GET /lmserve/conversations/export`` writes this; ``POST .../import`` reads it."""

    format: Literal["lmserve.conversations"]
    version: Annotated[int, Field(ge=1, le=EXPORT_VERSION)]
    exported_at: Timestamp | None = None
    conversations: list[ExportedConversation] = Field(max_length=MAX_IMPORTED)
