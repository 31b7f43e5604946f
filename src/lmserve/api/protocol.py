"""Pydantic models of the OpenAI chat API: requests, responses, stream chunks.

Request fields follow the order of OpenAI's API reference, then LM Studio's extensions
(``top_k``, ``min_p``, ``repeat_penalty``).  Bounds are declared on the fields, so a bad
value never reaches the engine.  Unknown fields are ignored, as OpenAI's clients expect.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 1000
MAX_TOKENS_CAP = 1_000_000
MAX_MESSAGES = 4096
MAX_LOGIT_BIAS = 1024  # entries
MAX_TOKEN_ID = 2**31 - 1  # llama.cpp's token ids are int32


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextContentPart(_Request):
    type: Literal["text"]
    text: str


class ImageContentPart(_Request):
    type: Literal["image_url", "input_image", "image"]


ContentPart = Annotated[TextContentPart | ImageContentPart, Field(discriminator="type")]


class FunctionCall(_Request):
    name: str
    arguments: str = ""


class ToolCall(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("a 'json_schema' object is required when type is 'json_schema'")
        return self


class FunctionDefinition(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=10_000)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Request):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ToolChoiceFunction(_Request):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class GenerationRequestFields(_Request):
    """Fields shared by chat and text completions, in the order of OpenAI's reference."""

    model: str = Field(min_length=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS
    )
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    n: int = Field(default=1, ge=1, le=16)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = None
    # Extensions of LM Studio and llama.cpp beyond OpenAI's spec.
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    ttl: float | None = Field(default=None, gt=0, le=365 * 24 * 3600)  # JIT-loaded model's TTL

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def completion_limit(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(GenerationRequestFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    logprobs: bool = False
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    tool_choice: ToolChoice | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # vLLM's extension: the last message, an assistant's, is continued rather than answered.
    continue_final_message: bool = False

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(GenerationRequestFields):
    # A string, a list of strings, a token list, or a list of token lists: one choice set each.
    prompt: (
        str
        | list[str]
        | list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]]
        | list[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]]]
    ) = ""
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: str | None = None
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS_CAP)  # OpenAI's default


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ResponseToolCall] | None = None
    # What reasoning models think before answering (LM Studio and DeepSeek call it this).
    reasoning_content: str | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class CompletionChoice(BaseModel):
    index: int
    text: str
    # {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, as OpenAI's legacy API.
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReason | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None = None  # {"content": [...], "refusal": None}
    finish_reason: FinishReason | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
