"""Pydantic models of OpenAI's Responses API requests (``POST /v1/responses``).

Only what lmserve can honour is modelled; unknown fields are ignored, as OpenAI's clients
expect.  Input items without a ``type`` are messages, as in OpenAI's API, so both
``{"role": "user", "content": "Hi"}`` and the items of an earlier response's ``output``
(which clients often append to the next request's ``input``) validate.  A string ``input``
is one user message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from lmserve.api.common import bounds
from lmserve.api.common.protocol import FunctionDefinition, RequestModel, schema_required


class TextPart(RequestModel):
    # Earlier assistant turns come back as output_text; both are plain text to the model.
    type: Literal["input_text", "output_text"]
    text: str


class ImagePart(RequestModel):
    """An image for a vision model, by URL (a ``data:`` URL, or http(s) where the server
    fetches them); ``file_id`` names an upload to OpenAI's Files API, which is refused.  Kept
    as sent, so a stored conversation gives the image to the next turn too."""

    type: Literal["input_image"]
    image_url: str | None = Field(default=None, min_length=1)
    file_id: str | None = Field(default=None, max_length=200)
    detail: str | None = Field(default=None, max_length=16)  # accepted; the projector decides


class MediaPart(RequestModel):
    """Inputs the local models cannot read: validated, then refused with a clear 400."""

    type: Literal["input_file", "input_audio", "refusal"]


ContentPart = Annotated[TextPart | ImagePart | MediaPart, Field(discriminator="type")]


# What each kind of input item must have besides its type.
_REQUIRED = {
    "message": ("role", "content"),
    "function_call": ("call_id", "name"),
    "function_call_output": ("call_id", "output"),
    "reasoning": (),
    # Items of MCP tools run by the server, sent back as earlier outputs; and the client's
    # answer to an approval request.
    "mcp_list_tools": ("server_label",),
    "mcp_call": ("server_label", "name"),
    "mcp_approval_request": ("id", "server_label", "name"),
    "mcp_approval_response": ("approval_request_id", "approve"),
}


class InputItem(RequestModel):
    """One input item: a message (the default type), a function call or its output, or an
    earlier response's reasoning (accepted so outputs can be sent back, then left out).

    One flat model rather than a union of models, so that a bad field is named plainly in
    the error (``input[0].role``) instead of under a union member's name.
    """

    type: Literal[
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "mcp_list_tools",
        "mcp_call",
        "mcp_approval_request",
        "mcp_approval_response",
    ] = "message"
    id: str | None = Field(default=None, max_length=200)
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = Field(default=None, min_length=1, max_length=200)
    name: str | None = Field(default=None, min_length=1, max_length=64)
    namespace: str | None = Field(default=None, min_length=1, max_length=64)
    arguments: str = ""
    output: str | list[ContentPart] | None = None
    server_label: str | None = Field(default=None, min_length=1, max_length=64)
    error: str | dict[str, Any] | None = None
    approval_request_id: str | None = Field(default=None, min_length=1, max_length=200)
    approve: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_reasoning(cls, value: Any) -> Any:
        # A reasoning item's content is reasoning text, which is never shown to the model.
        if isinstance(value, dict) and value.get("type") == "reasoning":
            return {"type": "reasoning"}
        if isinstance(value, dict) and value.get("type") == "mcp_list_tools":
            # The listing is made afresh each turn; only its label is kept.
            return {"type": "mcp_list_tools", "server_label": value.get("server_label")}
        return value

    @model_validator(mode="after")
    def _complete(self) -> InputItem:
        missing = [name for name in _REQUIRED[self.type] if getattr(self, name) is None]
        if missing:
            names = " and ".join(f"'{name}'" for name in missing)
            raise ValueError(f"a '{self.type}' item needs {names}")
        return self


class FunctionTool(FunctionDefinition):
    """A Responses tool is flat: ``{"type": "function", "name", "parameters", ...}``."""

    type: Literal["function"]


class McpToolFilter(RequestModel):
    tool_names: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=128
    )
    read_only: bool | None = None  # accepted; a server's own hints are not trusted


class McpApprovalFilter(RequestModel):
    always: McpToolFilter | None = None
    never: McpToolFilter | None = None


class McpToolParam(RequestModel):
    """An MCP server whose tools the server offers the model and runs: by ``server_url``,
    or, with none, the server of mcp.json named ``server_label``."""

    type: Literal["mcp"]
    server_label: str = Field(min_length=1, max_length=64)
    server_url: str | None = Field(default=None, min_length=1, max_length=2000)
    server_description: str | None = Field(default=None, max_length=bounds.MAX_DESCRIPTION)
    allowed_tools: (
        list[Annotated[str, Field(min_length=1, max_length=128)]] | McpToolFilter | None
    ) = Field(default=None)
    headers: dict[str, Annotated[str, Field(max_length=8192)]] | None = Field(
        default=None, max_length=64
    )
    authorization: str | None = Field(default=None, max_length=8192)
    # OpenAI's default: every call waits for the client's approval.
    require_approval: Literal["always", "never"] | McpApprovalFilter | None = "always"

    @property
    def tool_names(self) -> list[str] | None:
        allowed = self.allowed_tools
        return allowed.tool_names if isinstance(allowed, McpToolFilter) else allowed

    def needs_approval(self, tool: str) -> bool:
        rule = self.require_approval
        if rule is None or rule == "always":
            return True
        if rule == "never":
            return False
        if rule.never is not None and tool in (rule.never.tool_names or []):
            return False
        if rule.always is not None:
            return rule.always.tool_names is None or tool in rule.always.tool_names
        return True


class NamespaceTool(RequestModel):
    """Functions grouped under a shared name (Codex puts each MCP server's tools in one).

    The model is offered each function under its qualified name (:func:`qualified_name`);
    its calls come back as ``function_call`` items with ``name`` and ``namespace`` apart.
    """

    type: Literal["namespace"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=bounds.MAX_DESCRIPTION)
    tools: list[FunctionTool] = Field(max_length=128)


# Tools that OpenAI's servers run themselves.  A local server cannot search the web or run
# code on a client's behalf, so these are left out of the prompt (and named in the log and
# the ``x-lmserve-tools-left-out`` header) instead of failing a request that also carries
# the client's own tools, as Codex's requests do.
HOSTED_TOOL_TYPES = (
    "web_search",
    "web_search_preview",
    "web_search_2025_08_26",
    "web_search_preview_2025_03_11",
    "file_search",
    "code_interpreter",
    "computer",
    "computer_use_preview",
    "image_generation",
    "local_shell",
    "shell",
    "apply_patch",
    "tool_search",
)


class HostedTool(RequestModel):
    type: Literal[HOSTED_TOOL_TYPES]  # type: ignore[valid-type]


_TOOL_TYPES = ("function", "namespace", "mcp", *HOSTED_TOOL_TYPES)


def _known_tool_type(value: Any) -> Any:
    # Named plainly, rather than as a failed match of the tagged union.
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, str) and kind not in _TOOL_TYPES:
        raise ValueError(
            f"tools of type {kind!r} are not supported; function and namespace tools are, "
            "and OpenAI's hosted tools are accepted and left out"
        )
    return value


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("function", "namespace", "mcp") else "hosted"


# Tagged by kind; the tags are union members to the error mapper (api/common/errors.py), so a
# bad field is named ``tools[0].tools``, not ``tools[0].namespace.tools``.
Tool = Annotated[
    Annotated[FunctionTool, Tag("union:function")]
    | Annotated[NamespaceTool, Tag("union:namespace")]
    | Annotated[McpToolParam, Tag("union:mcp")]
    | Annotated[HostedTool, Tag("union:hosted")],
    Discriminator(lambda value: f"union:{_tool_kind(value)}"),
    BeforeValidator(_known_tool_type),
]


def qualified_name(namespace: str, name: str) -> str:
    """The name a namespace's function is offered to the model under: joined with a dot, or
    appended when the namespace already ends in a separator (``mcp__github__`` + ``search``)."""
    return f"{namespace}{name}" if namespace[-1] in "_.-" else f"{namespace}.{name}"


class FunctionToolChoice(RequestModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)
    namespace: str | None = Field(default=None, min_length=1, max_length=64)


class McpToolChoice(RequestModel):
    """A call of an MCP server's tool, forced (the first round's)."""

    type: Literal["mcp"]
    server_label: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, min_length=1, max_length=128)


class TextFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    _schema_given = schema_required("schema_", "schema")


class TextConfig(RequestModel):
    format: TextFormat | None = None


LOGPROBS = "message.output_text.logprobs"
Includable = Literal[
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "file_search_call.results",
    "message.input_image.image_url",
    "message.output_text.logprobs",
    "reasoning.encrypted_content",
    "web_search_call.action.sources",
    "web_search_call.results",
]


class ResponsesRequest(RequestModel):
    """Fields in the order of OpenAI's reference, then lmserve's extensions."""

    model: str | None = Field(default=None, min_length=1)  # see GenerationRequestFields.model
    input: list[InputItem] = Field(default_factory=list, max_length=bounds.MAX_MESSAGES)
    # What else the response should carry. Only the output's log-probabilities exist here;
    # the rest are accepted (clients such as Codex send them) and have nothing to add.
    include: list[Includable] | None = Field(default=None, max_length=16)
    instructions: str | None = None
    max_output_tokens: bounds.TokenLimit | None = None
    metadata: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None
    ) = Field(default=None, max_length=16)
    parallel_tool_calls: bool = True
    previous_response_id: bounds.ResponseId | None = None
    store: bool = True
    stream: bool = False
    temperature: bounds.Temperature | None = None
    text: TextConfig | None = None
    max_tool_calls: int | None = Field(default=None, ge=1, le=1024)
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | McpToolChoice | None = (
        None
    )
    tools: list[Tool] | None = Field(default=None, max_length=128)
    top_logprobs: bounds.TopLogprobs | None = None
    top_p: bounds.TopP | None = None
    # "auto": a conversation too long for the context loses its oldest turns instead of
    # failing with context_length_exceeded.
    truncation: Literal["auto", "disabled"] | None = "disabled"
    user: str | None = None
    # Extensions of LM Studio and llama.cpp beyond OpenAI's spec, as on chat completions.
    top_k: bounds.TopK | None = None
    min_p: bounds.MinP | None = None
    repeat_penalty: bounds.RepeatPenalty | None = None
    seed: bounds.Seed | None = None
    ttl: bounds.TTL | None = None
    speculative: bool | None = None  # see GenerationRequestFields.speculative
    draft_model: str | None = Field(default=None, min_length=1)  # LM Studio's
    # lmserve's: rounds of MCP calls in one response (the server's --max-tool-rounds).
    max_tool_rounds: int | None = Field(default=None, ge=0, le=64)

    @property
    def wants_logprobs(self) -> bool:
        return LOGPROBS in (self.include or [])

    @property
    def mcp_tools(self) -> list[McpToolParam]:
        return [tool for tool in self.tools or [] if isinstance(tool, McpToolParam)]

    @property
    def hosted_tools(self) -> list[str]:
        """The types of the hosted tools in ``tools``, which are left out."""
        return [tool.type for tool in self.tools or [] if isinstance(tool, HostedTool)]

    @field_validator("input", mode="before")
    @classmethod
    def _string_input(cls, value: Any) -> Any:
        # A string is one user message; as a list, a bad item is named by its index.
        return [{"role": "user", "content": value}] if isinstance(value, str) else value
