"""The protocol every surface shares: OpenAI's chat, text completion and embedding models.

Every text surface is served as an OpenAI chat (or text) completion, so these requests and
answers are the lingua franca of the API layer: the OpenAI routes take them as they are, the
others translate into them.  Request fields follow the order of OpenAI's API reference, then
LM Studio's extensions (``top_k``, ``min_p``, ``repeat_penalty``).  Bounds are declared on the
fields (most as the shared types of :mod:`lmserve.api.common.bounds`), so a bad value never
reaches the engine.  Unknown fields are ignored, as OpenAI's clients expect.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from lmserve.api.common.bounds import (
    MAX_DESCRIPTION,
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    TTL,
    MinP,
    RepeatPenalty,
    Seed,
    Temperature,
    Token,
    TokenLimit,
    TopK,
    TopLogprobs,
    TopP,
)
from lmserve.engine.types import ImageInput


class RequestModel(BaseModel):
    """Base of every request model: unknown fields are ignored, so newer clients never break."""

    model_config = ConfigDict(extra="ignore")


class TextContentPart(RequestModel):
    type: Literal["text"]
    text: str


class ImageUrl(RequestModel):
    url: str  # a data: URL (base64), or http(s) when the server allows fetching them
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the projector decides


class ImageContentPart(RequestModel):
    """An image, as OpenAI's chat sends it; every surface's images become one of these."""

    type: Literal["image_url"]
    image_url: ImageUrl | str
    # Its pixels, once read (api/common/images.read_images); never part of the JSON.
    _decoded: ImageInput | None = PrivateAttr(default=None)

    @property
    def decoded(self) -> ImageInput | None:
        return self._decoded

    @decoded.setter
    def decoded(self, image: ImageInput) -> None:
        self._decoded = image

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url

    @classmethod
    def of(cls, url: str) -> ImageContentPart:
        return cls(type="image_url", image_url=ImageUrl(url=url))


class OtherContentPart(RequestModel):
    """Content no local model reads (audio, files), or another surface's type sent here."""

    type: Literal["input_audio", "file", "input_image", "image"]


ContentPart = Annotated[
    TextContentPart | ImageContentPart | OtherContentPart, Field(discriminator="type")
]


def parts_content(parts: Sequence[TextContentPart | ImageContentPart]) -> str | list[ContentPart]:
    """A message's content made of another surface's text and image parts, in their order:
    one string (the texts joined by lines) when there is no image, else the parts."""
    if all(isinstance(part, TextContentPart) for part in parts):
        return "\n".join(part.text for part in parts if isinstance(part, TextContentPart))
    return [*parts]


class FunctionCall(RequestModel):
    name: str
    arguments: str = ""


class ToolCall(RequestModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall

    @classmethod
    def of(cls, call_id: str | None, name: str, arguments: str) -> ToolCall:
        """An earlier call, as another surface's history names it."""
        return cls(id=call_id, function=FunctionCall(name=name, arguments=arguments))


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(RequestModel):
    include_usage: bool = False


class JsonSchemaFormat(RequestModel):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


def schema_required(field: str, name: str) -> Any:
    """A model validator: a format of type ``json_schema`` needs its schema in ``field``
    (``name``, as the client spells it)."""

    def check(format_: Any) -> Any:
        if format_.type == "json_schema" and getattr(format_, field) is None:
            raise ValueError(f"a '{name}' object is required when type is 'json_schema'")
        return format_

    return model_validator(mode="after")(check)


class ResponseFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    _schema_given = schema_required("json_schema", "json_schema")


class FunctionDefinition(RequestModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(RequestModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ToolChoiceFunction(RequestModel):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(RequestModel):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction

    @classmethod
    def of(cls, name: str) -> NamedToolChoice:
        """A call of the function ``name``, forced."""
        return cls(function=ToolChoiceFunction(name=name))


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class GenerationRequestFields(RequestModel):
    """Fields shared by chat and text completions, in the order of OpenAI's reference."""

    # Missing or null: the one model loaded serves it (models/unnamed.py), on every surface.
    model: str | None = Field(default=None, min_length=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS
    )
    max_tokens: TokenLimit | None = None
    n: int = Field(default=1, ge=1, le=16)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None
    # Extensions of LM Studio and llama.cpp beyond OpenAI's spec.
    top_k: TopK | None = None
    min_p: MinP | None = None
    repeat_penalty: RepeatPenalty | None = None
    ttl: TTL | None = None
    # lmserve's: speculative decoding by prompt lookup for this request; null as the server's
    # --speculative says, false never (for comparison), true whenever the text offers a draft.
    speculative: bool | None = None
    # LM Studio's: a downloaded model of the same vocabulary that drafts tokens for this one.
    draft_model: str | None = Field(default=None, min_length=1)

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
    max_completion_tokens: TokenLimit | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    tool_choice: ToolChoice | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)
    top_logprobs: TopLogprobs | None = None
    # vLLM's extension: the last message, an assistant's, is continued rather than answered.
    continue_final_message: bool = False

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(GenerationRequestFields):
    # A string, a list of strings, a token list, or a list of token lists: one choice set each.
    prompt: str | list[str] | list[Token] | list[list[Token]] = ""
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: str | None = None
    max_tokens: TokenLimit | None = 16  # OpenAI's default
    # vLLM's and llama-server's extension: structured output for a raw prompt too.
    response_format: ResponseFormat | None = None


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


class Completion(BaseModel):
    """What a chat and a text completion both are, in OpenAI's order (each narrows the
    ``object`` and ``choices``)."""

    id: str
    object: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[Any]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    # {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, as OpenAI's legacy API.
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReason | None


class TextCompletion(Completion):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None = None  # {"content": [...], "refusal": None}
    finish_reason: FinishReason | None


class ChatCompletion(Completion):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]


# ``/v1/embeddings`` and LM Studio's ``/api/v0/embeddings``, in OpenAI's order.
class EmbeddingRequest(RequestModel):
    input: str | list[str] | list[Token] | list[list[Token]]
    model: str | None = Field(default=None, min_length=1)  # see GenerationRequestFields.model
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    ttl: TTL | None = None
