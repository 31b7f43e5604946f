"""Pydantic models of OpenAI's Responses API requests (``POST /v1/responses``).

Only what lmserve can honour is modelled; unknown fields are ignored, as OpenAI's clients
expect.  Input items without a ``type`` are messages, as in OpenAI's API, so both
``{"role": "user", "content": "Hi"}`` and the items of an earlier response's ``output``
(which clients often append to the next request's ``input``) validate.  A string ``input``
is one user message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmserve.api.protocol import MAX_MESSAGES, MAX_TOKENS_CAP, FunctionDefinition


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    # Earlier assistant turns come back as output_text; both are plain text to the model.
    type: Literal["input_text", "output_text"]
    text: str


class MediaPart(_Request):
    """Inputs the local text models cannot read: validated, then refused with a clear 400."""

    type: Literal["input_image", "input_file", "input_audio", "refusal"]


ContentPart = Annotated[TextPart | MediaPart, Field(discriminator="type")]


# What each kind of input item must have besides its type.
_REQUIRED = {
    "message": ("role", "content"),
    "function_call": ("call_id", "name"),
    "function_call_output": ("call_id", "output"),
    "reasoning": (),
}


class InputItem(_Request):
    """One input item: a message (the default type), a function call or its output, or an
    earlier response's reasoning (accepted so outputs can be sent back, then left out).

    One flat model rather than a union of models, so that a bad field is named plainly in
    the error (``input[0].role``) instead of under a union member's name.
    """

    type: Literal["message", "function_call", "function_call_output", "reasoning"] = "message"
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = Field(default=None, min_length=1, max_length=200)
    name: str | None = Field(default=None, min_length=1, max_length=64)
    arguments: str = ""
    output: str | list[ContentPart] | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_reasoning(cls, value: Any) -> Any:
        # A reasoning item's content is reasoning text, which is never shown to the model.
        if isinstance(value, dict) and value.get("type") == "reasoning":
            return {"type": "reasoning"}
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

    @model_validator(mode="before")
    @classmethod
    def _functions_only(cls, value: Any) -> Any:
        # Checked first, so a hosted tool (web_search...) is refused for what it is.
        kind = value.get("type") if isinstance(value, dict) else None
        if kind is not None and kind != "function":
            raise ValueError(f"only function tools are supported, not {kind!r}")
        return value


class FunctionToolChoice(_Request):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("a 'schema' object is required when type is 'json_schema'")
        return self


class TextConfig(_Request):
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


class ResponsesRequest(_Request):
    """Fields in the order of OpenAI's reference, then lmserve's extensions."""

    model: str = Field(min_length=1)
    input: list[InputItem] = Field(default_factory=list, max_length=MAX_MESSAGES)
    # What else the response should carry. Only the output's log-probabilities exist here;
    # the rest are accepted (clients such as Codex send them) and have nothing to add.
    include: list[Includable] | None = Field(default=None, max_length=16)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    metadata: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None
    ) = Field(default=None, max_length=16)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = Field(default=None, max_length=200)
    store: bool = True
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    text: TextConfig | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    # "auto": a conversation too long for the context loses its oldest turns instead of
    # failing with context_length_exceeded.
    truncation: Literal["auto", "disabled"] | None = "disabled"
    user: str | None = None
    # Extensions of LM Studio and llama.cpp beyond OpenAI's spec, as on chat completions.
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    ttl: float | None = Field(default=None, gt=0, le=365 * 24 * 3600)

    @property
    def wants_logprobs(self) -> bool:
        return LOGPROBS in (self.include or [])

    @field_validator("input", mode="before")
    @classmethod
    def _string_input(cls, value: Any) -> Any:
        # A string is one user message; as a list, a bad item is named by its index.
        return [{"role": "user", "content": value}] if isinstance(value, str) else value
