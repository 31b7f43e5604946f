"""The chat completions service: from an OpenAI request to engine requests and back.

It knows nothing of HTTP: the router hands it a validated request and gets back either a
:class:`ChatCompletion` or an iterator of stream chunks (plain dicts, serialised by the router).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from lmserve import __version__
from lmserve.api.errors import APIError, ContextLengthExceededError, InvalidRequestError
from lmserve.api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    PromptTokensDetails,
    TextContentPart,
    Usage,
)
from lmserve.engine.types import (
    Finished,
    GenerationRequest,
    GenerationStream,
    SamplingParams,
    TextDelta,
)
from lmserve.logbus import LogBus
from lmserve.models.manager import LoadedModel, ModelManager

SYSTEM_FINGERPRINT = f"lmserve-{__version__}"
_DEFAULTS = SamplingParams()


class GenerationFailed(APIError):
    """The engine could not finish the request (500, ``server_error``)."""


@dataclass
class PreparedChat:
    """A request resolved against a model: the exact prompt, its tokens, how to sample."""

    request_id: str
    model: LoadedModel
    prompt: str
    prompt_tokens: list[int]
    sampling: SamplingParams
    max_tokens: int | None
    stop: tuple[str, ...]
    n: int

    def engine_requests(self) -> list[GenerationRequest]:
        requests = []
        for index in range(self.n):
            sampling = self.sampling
            if index and sampling.seed is not None:
                # n choices from one seed would all be the same text.
                sampling = SamplingParams(**{**sampling.__dict__, "seed": sampling.seed + index})
            requests.append(
                GenerationRequest(
                    prompt_tokens=self.prompt_tokens,
                    sampling=sampling,
                    max_tokens=self.max_tokens,
                    stop=self.stop,
                )
            )
        return requests


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: ``role`` and string ``content``."""
    rendered = []
    for index, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, TextContentPart):
                    raise InvalidRequestError(
                        "This model does not accept image inputs; send text content only.",
                        param=f"messages[{index}].content",
                        code="unsupported_content",
                    )
                parts.append(part.text)
            content = "\n".join(parts)
        # OpenAI's "developer" role is the system role under a newer name.
        role = "system" if message.role == "developer" else message.role
        item: dict[str, Any] = {"role": role, "content": content or ""}
        if message.name:
            item["name"] = message.name
        rendered.append(item)
    return rendered


def sampling_params(body: ChatCompletionRequest, n_vocab: int) -> SamplingParams:
    bias: list[tuple[int, float]] = []
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < n_vocab:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key!r} is not a token id of this model "
                f"(0 to {n_vocab - 1}).",
                param="logit_bias",
                code="invalid_value",
            )
        if not -100.0 <= value <= 100.0:
            raise InvalidRequestError(
                f"Invalid value in 'logit_bias' for token {token}: {value} is outside -100 to 100.",
                param="logit_bias",
                code="invalid_value",
            )
        bias.append((token, value))

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return SamplingParams(
        temperature=pick(body.temperature, _DEFAULTS.temperature),
        top_k=pick(body.top_k, _DEFAULTS.top_k),
        top_p=pick(body.top_p, _DEFAULTS.top_p),
        min_p=pick(body.min_p, _DEFAULTS.min_p),
        repeat_penalty=pick(body.repeat_penalty, _DEFAULTS.repeat_penalty),
        presence_penalty=pick(body.presence_penalty, _DEFAULTS.presence_penalty),
        frequency_penalty=pick(body.frequency_penalty, _DEFAULTS.frequency_penalty),
        logit_bias=tuple(bias),
        seed=body.seed,
    )


def usage_of(finished: list[Finished]) -> Usage:
    prompt = finished[0].prompt_tokens if finished else 0
    completion = sum(item.completion_tokens for item in finished)
    cached = finished[0].cached_tokens if finished else 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def stats_of(finished: Finished) -> dict[str, Any]:
    """Per-request figures in LM Studio's ``stats`` vocabulary."""
    return {
        "tokens_per_second": finished.tokens_per_second,
        "time_to_first_token": finished.time_to_first_token,
        "generation_time": finished.generation_seconds,
        "stop_reason": finished.stop_reason,
        "prompt_tokens": finished.prompt_tokens,
        "cached_tokens": finished.cached_tokens,
        "completion_tokens": finished.completion_tokens,
    }


def _public_finish_reason(finished: Finished) -> str:
    if finished.finish_reason == "error":
        raise GenerationFailed(f"Generation failed: {finished.error}")
    return "length" if finished.finish_reason == "length" else "stop"


class ChatService:
    def __init__(self, models: ModelManager, logs: LogBus) -> None:
        self.models = models
        self.logs = logs

    def prepare(self, body: ChatCompletionRequest) -> PreparedChat:
        """Resolve the model, render and tokenize the prompt, check it fits.

        Raises ``ModelNotFound``, ``TemplateRenderError`` or :class:`InvalidRequestError`.
        """
        model = self.models.get(body.model)
        if body.response_format is not None and body.response_format.type != "text":
            raise InvalidRequestError(
                f"response_format type '{body.response_format.type}' is not supported yet.",
                param="response_format",
                code="unsupported_value",
            )
        prompt = model.template.render(template_messages(body.messages))
        tokens = model.llama.tokenize_prompt(prompt)
        if len(tokens) >= model.n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {model.n_ctx} tokens. However, your "
                f"messages resulted in {len(tokens)} tokens. Please reduce the length of the "
                "messages.",
                param="messages",
            )
        stop = tuple(body.stop_list())
        if len(stop) > 16 or any(len(item) > 1000 for item in stop):
            raise InvalidRequestError(
                "'stop' takes at most 16 strings of at most 1000 characters.", param="stop"
            )
        return PreparedChat(
            request_id=f"chatcmpl-{secrets.token_hex(12)}",
            model=model,
            prompt=prompt,
            prompt_tokens=tokens,
            sampling=sampling_params(body, model.llama.n_vocab),
            max_tokens=body.max_completion_tokens or body.max_tokens,
            stop=stop,
            n=body.n,
        )

    def start(self, prepared: PreparedChat) -> list[GenerationStream]:
        """Submit the request's choices to the engine (raises ``QueueFullError`` when full).

        Called before any response is sent, so that refusals get their own HTTP status.
        """
        streams: list[GenerationStream] = []
        try:
            for request in prepared.engine_requests():
                streams.append(prepared.model.engine.submit(request))
        except Exception:
            for stream in streams:
                stream.cancel()
            raise
        self.logs.publish(
            "llm.prediction.input",
            request_id=prepared.request_id,
            model=prepared.model.identifier,
            prompt=prepared.prompt,
            prompt_tokens=len(prepared.prompt_tokens),
        )
        return streams

    def _log_output(self, prepared: PreparedChat, index: int, text: str, done: Finished) -> None:
        self.logs.publish(
            "llm.prediction.output",
            request_id=prepared.request_id,
            model=prepared.model.identifier,
            choice=index,
            output=text,
            stats=stats_of(done),
        )

    async def complete(
        self, prepared: PreparedChat, streams: list[GenerationStream]
    ) -> ChatCompletion:
        try:
            results = await asyncio.gather(*(_collect(stream) for stream in streams))
        finally:
            cancel_all(streams)
        choices = []
        for index, (text, done) in enumerate(results):
            self._log_output(prepared, index, text, done)
            choices.append(
                Choice(
                    index=index,
                    message=AssistantMessage(content=text),
                    finish_reason=_public_finish_reason(done),
                )
            )
        return ChatCompletion(
            id=prepared.request_id,
            model=prepared.model.identifier,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=choices,
            usage=usage_of([done for _, done in results]),
        )

    async def stream(
        self, prepared: PreparedChat, streams: list[GenerationStream], include_usage: bool
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunks of ``chat.completion.chunk`` as dicts, ending with the optional usage chunk."""
        created = int(time.time())
        base = {
            "id": prepared.request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": prepared.model.identifier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            body = {
                **base,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                body["usage"] = None
            return body

        texts = [""] * len(streams)
        finished: list[Finished] = []
        try:
            for index in range(len(streams)):
                yield chunk(index, {"role": "assistant", "content": ""})
            async for index, event in _merge(streams):
                if isinstance(event, TextDelta):
                    texts[index] += event.text
                    yield chunk(index, {"content": event.text})
                else:
                    finished.append(event)
                    self._log_output(prepared, index, texts[index], event)
                    yield chunk(index, {}, _public_finish_reason(event))
            if include_usage:
                yield {**base, "choices": [], "usage": usage_of(finished).model_dump()}
        finally:
            cancel_all(streams)


def cancel_all(streams: list[GenerationStream]) -> None:
    for stream in streams:
        stream.cancel()


async def _collect(stream: GenerationStream) -> tuple[str, Finished]:
    parts: list[str] = []
    async for event in stream:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise RuntimeError("stream ended without a Finished event")


async def _merge(
    streams: list[GenerationStream],
) -> AsyncIterator[tuple[int, TextDelta | Finished]]:
    """Interleave the events of several streams as they arrive, tagged with their index."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TextDelta | Finished]] = asyncio.Queue()

    async def pump(index: int, stream: GenerationStream) -> None:
        async for event in stream:
            await queue.put((index, event))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, event = await queue.get()
            if isinstance(event, Finished):
                remaining -= 1
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


def sse_event(data: dict[str, Any] | str) -> bytes:
    payload = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    return f"data: {payload}\n\n".encode()
