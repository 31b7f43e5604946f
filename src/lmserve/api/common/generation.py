"""What chat and text completions share: sampling settings, submitting, collecting, usage.

A :class:`Generation` is one API request in flight: its ``n`` engine requests, the log records
of what went in and came out, and the usage and stats at the end.  The chat and completions
services only differ in how they build the prompt and shape the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from lmserve import __version__
from lmserve.api.common.bounds import MAX_STOP_LENGTH, MAX_STOP_SEQUENCES
from lmserve.api.common.errors import (
    ContextLengthExceededError,
    EngineCrashed,
    GenerationFailed,
    InvalidRequestError,
    ServiceUnavailableError,
)
from lmserve.api.common.protocol import (
    Completion,
    GenerationRequestFields,
    PromptTokensDetails,
    ToolDefinition,
    Usage,
)
from lmserve.config import PredictionDefaults
from lmserve.engine.types import (
    Event,
    Finished,
    GenerationRequest,
    GenerationStream,
    PromptImage,
    PromptProgress,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from lmserve.logbus import LogBus
from lmserve.models.loader import LoadedModel, fitting_context

SYSTEM_FINGERPRINT = f"lmserve-{__version__}"
C = TypeVar("C", bound=Completion)


@dataclass
class Prepared:
    """A request resolved against a model: the exact prompt, its tokens, how to sample."""

    request_id: str
    model: LoadedModel
    prompts: list[str]  # the exact text each prompt gives the model (one for chat)
    prompt_tokens: list[list[int]]
    sampling: SamplingParams
    max_tokens: int | None
    stop: tuple[str, ...]
    n: int
    logprobs: int | None = None
    turn_end: tuple[str, ...] = ()  # see GenerationRequest.turn_end
    # Chat only: the tools the model may call, to find calls in what it writes.
    tools: list[ToolDefinition] = field(default_factory=list)
    parallel_tool_calls: bool = True
    # Chat only: the template opened a <think> block at the end of the prompt.
    starts_in_reasoning: bool = False
    speculative: bool | None = None  # see GenerationRequest.speculative
    draft_model: str | None = None  # loaded into the model's worker by start_generation
    # Chat only: the prompt's images, where its tokens hold their placeholders.
    images: tuple[PromptImage, ...] = ()

    @classmethod
    def of(
        cls,
        body: GenerationRequestFields,
        model: LoadedModel,
        prompts: list[str],
        tokens: list[list[int]],
        *,
        id_prefix: str,
        param: str,
        what: str,
        grammar: str | None = None,
        logprobs: int | None = None,
    ) -> Prepared:
        """``body`` resolved against ``model``: every prompt checked to fit, sampling settled;
        ``param`` and ``what`` name the prompt in a too-long error."""
        for prompt_tokens in tokens:
            check_fits(model, prompt_tokens, param, what)
        defaults = model.prediction
        sampling = sampling_params(body, model.vocab.n_vocab, defaults)
        if grammar is not None:
            sampling = replace(sampling, grammar=grammar)
        return cls(
            request_id=new_id(id_prefix),
            model=model,
            prompts=prompts,
            prompt_tokens=tokens,
            sampling=sampling,
            max_tokens=pick(body.completion_limit(), defaults.max_tokens),
            stop=stop_sequences(body) if body.stop is not None else defaults.stop,
            n=body.n,
            logprobs=logprobs,
            speculative=body.speculative,
        )

    def engine_requests(self) -> list[GenerationRequest]:
        """``n`` requests per prompt; choice ``p * n + j`` is the j-th of prompt p."""
        requests = []
        for tokens in self.prompt_tokens:
            for _ in range(self.n):
                sampling = self.sampling
                if requests and sampling.seed is not None:
                    # Several choices from one seed would all be the same text.
                    sampling = replace(sampling, seed=sampling.seed + len(requests))
                requests.append(
                    GenerationRequest(
                        prompt_tokens=tokens,
                        images=self.images,
                        sampling=sampling,
                        max_tokens=self.max_tokens,
                        stop=self.stop,
                        turn_end=self.turn_end,
                        logprobs=self.logprobs,
                        speculative=self.speculative,
                        draft_model=self.draft_model,
                        label=self.request_id,
                    )
                )
        return requests


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def sampling_params(
    body: GenerationRequestFields, n_vocab: int, defaults: PredictionDefaults
) -> SamplingParams:
    """The request's sampling settings, the model's ``defaults`` for what it leaves out."""
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

    return SamplingParams(
        temperature=pick(body.temperature, defaults.temperature),
        top_k=pick(body.top_k, defaults.top_k),
        top_p=pick(body.top_p, defaults.top_p),
        min_p=pick(body.min_p, defaults.min_p),
        repeat_penalty=pick(body.repeat_penalty, defaults.repeat_penalty),
        presence_penalty=pick(body.presence_penalty, 0.0),
        frequency_penalty=pick(body.frequency_penalty, 0.0),
        logit_bias=tuple(bias),
        seed=pick(body.seed, defaults.seed),
    )


def stop_sequences(body: GenerationRequestFields) -> tuple[str, ...]:
    stop = tuple(body.stop_list())
    if len(stop) > MAX_STOP_SEQUENCES or any(len(item) > MAX_STOP_LENGTH for item in stop):
        raise InvalidRequestError(
            f"'stop' takes at most {MAX_STOP_SEQUENCES} strings of at most "
            f"{MAX_STOP_LENGTH} characters.",
            param="stop",
        )
    return stop


def check_fits(model: LoadedModel, tokens: list[int], param: str, what: str) -> None:
    """OpenAI's words for a prompt too long, and how to load the model so that it fits."""
    if len(tokens) >= model.n_ctx:
        trained = model.engine.info.n_ctx_train
        if len(tokens) < trained:
            fitting = min(fitting_context(len(tokens)), trained)
            advice = (
                f" Or load the model with a longer context: --context-length {fitting} (on "
                f"'lmserve load' or 'lmserve serve'; it was trained on {trained} tokens)."
            )
        else:
            advice = f" The model was trained on {trained} tokens: no context would hold it."
        raise ContextLengthExceededError(
            f"This model's maximum context length is {model.n_ctx} tokens. However, your "
            f"{what} resulted in {len(tokens)} tokens. Please reduce the length of the {what}."
            + advice,
            param=param,
            prompt_tokens=len(tokens),
        )


def stats_of(finished: Finished) -> dict[str, Any]:
    """Per-request figures in LM Studio's ``stats`` vocabulary."""
    restored = finished.cached_from_memory + finished.cached_from_disk
    return {
        "tokens_per_second": finished.tokens_per_second,
        "time_to_first_token": finished.time_to_first_token,
        "generation_time": finished.generation_seconds,
        "stop_reason": finished.stop_reason,
        "prompt_tokens": finished.prompt_tokens,
        "cached_tokens": finished.cached_tokens,
        # lmserve's addition: where the cached tokens came from (the prompt cache's tiers, or
        # the slot's own cells).
        "cached_tokens_from": {
            "slot": finished.cached_tokens - restored,
            "memory": finished.cached_from_memory,
            "disk": finished.cached_from_disk,
        },
        "completion_tokens": finished.completion_tokens,
        **draft_stats(finished),
        **replica_of(finished),
    }


def replica_of(finished: Finished) -> dict[str, str]:
    """The replica that ran a replicated model's request, as the native stats name it."""
    return {"replica": finished.replica} if finished.replica is not None else {}


def draft_stats(finished: Finished) -> dict[str, Any]:
    """LM Studio's speculative-decoding counts, for a request that drafted."""
    drafts = finished.drafts
    if drafts is None:
        return {}
    return {
        **({"draft_model": drafts.model} if drafts.model else {}),
        "total_draft_tokens_count": drafts.total,
        "accepted_draft_tokens_count": drafts.accepted,
        "rejected_draft_tokens_count": drafts.rejected,
        "ignored_draft_tokens_count": drafts.ignored,
    }


def public_finish_reason(finished: Finished) -> str:
    if finished.finish_reason == "error":
        if finished.crashed:
            raise EngineCrashed(
                f"The request failed because {finished.error}. The model is loaded again "
                "for the next request."
            )
        if finished.unavailable:
            # Cut off by an unload or the end of a shutdown's drain: try again (elsewhere).
            raise ServiceUnavailableError(
                f"The request was stopped: {finished.error}.", code="unavailable"
            )
        if finished.refused:
            raise InvalidRequestError(f"The request cannot be served: {finished.error}.")
        raise GenerationFailed(f"Generation failed: {finished.error}")
    return "length" if finished.finish_reason == "length" else "stop"


REPLICA_HEADER = "x-lmserve-replica"
PLACEMENT_TIMEOUT = 60.0  # seconds for a replicated model's router to place a request


class Generation:
    """One API request in flight: its engine streams and its log records."""

    def __init__(self, prepared: Prepared, logs: LogBus) -> None:
        """Submit to the engine; raises ``QueueFullError`` before anything is sent back."""
        self.prepared = prepared
        self._logs = logs
        self.streams: list[GenerationStream] = []
        try:
            for request in prepared.engine_requests():
                self.streams.append(prepared.model.engine.submit(request))
        except Exception:
            self.cancel()
            raise
        self.texts = [""] * len(self.streams)
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in self.streams]
        self.finished: list[Finished | None] = [None] * len(self.streams)
        for index, (prompt, tokens) in enumerate(
            zip(prepared.prompts, prepared.prompt_tokens, strict=True)
        ):
            logs.publish(
                "llm.prediction.input",
                request_id=prepared.request_id,
                model=prepared.model.identifier,
                choice=index * prepared.n,
                prompt=prompt,
                prompt_tokens=len(tokens),
                # Each image as the prompt shows it: its hash's start and its tokens.
                images=[
                    {
                        "id": image.image.id,
                        "tokens": image.n_tokens,
                        "width": image.image.width,
                        "height": image.image.height,
                    }
                    for image in prepared.images
                ],
                # What sampling the model gets: the request's settings over the defaults.
                parameters={
                    **prepared.sampling.describe(),
                    "max_tokens": prepared.max_tokens,
                    "stop": list(prepared.stop),
                },
            )

    async def placement(self) -> dict[str, str]:
        """The response headers naming the replicas that run it (``x-lmserve-replica``),
        once they are known; none for a model that is not replicated."""
        if not self.prepared.model.engine.replicated:
            return {}
        waits = [stream.placed.wait() for stream in self.streams]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), PLACEMENT_TIMEOUT)
        names = list(dict.fromkeys(s.replica for s in self.streams if s.replica is not None))
        return {REPLICA_HEADER: ",".join(names)} if names else {}

    def cancel(self) -> None:
        for stream in self.streams:
            stream.cancel()

    def _record(self, index: int, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.texts[index] += event.text
            self.logprobs[index].extend(event.logprobs)
            return
        if isinstance(event, PromptProgress):
            self._logs.publish(
                "llm.prediction.progress",
                request_id=self.prepared.request_id,
                model=self.prepared.model.identifier,
                choice=index,
                progress=round(event.fraction, 4),
                processed_tokens=event.processed,
                prompt_tokens=event.total,
            )
            return
        self.finished[index] = event
        self._logs.publish(
            "llm.prediction.output",
            request_id=self.prepared.request_id,
            model=self.prepared.model.identifier,
            choice=index,
            output=self.texts[index],
            stats=stats_of(event),
            # A replicated model's record says which replica ran it.
            **replica_of(event),
        )

    async def events(self) -> AsyncIterator[tuple[int, TextDelta | Finished]]:
        """Events of all choices as they come, tagged with the choice index."""
        async for index, event in self.events_with_progress():
            if not isinstance(event, PromptProgress):
                yield index, event

    async def events_with_progress(self) -> AsyncIterator[tuple[int, Event]]:
        """:meth:`events`, and how far each long prompt has been read while it is read."""
        try:
            async for index, event in _merge(self.streams):
                self._record(index, event)
                yield index, event
        finally:
            self.cancel()

    async def collect(self) -> list[tuple[str, Finished]]:
        """Wait for every choice; (text, final event) per choice."""
        async for _ in self.events():
            pass
        return [(text, done) for text, done in zip(self.texts, self.finished, strict=True) if done]

    def answer(self, kind: type[C], choices: list[Any]) -> C:
        """The whole answer, a chat or a text completion: this request's id, model and usage."""
        return kind(
            id=self.prepared.request_id,
            model=self.prepared.model.identifier,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=choices,
            usage=self.usage,
        )

    @property
    def usage(self) -> Usage:
        """Prompt tokens count once per prompt, completion tokens once per choice."""
        firsts = [self.finished[p * self.prepared.n] for p in range(len(self.prepared.prompts))]
        prompt = sum(len(tokens) for tokens in self.prepared.prompt_tokens)
        completion = sum(done.completion_tokens for done in self.finished if done is not None)
        cached = sum(done.cached_tokens for done in firsts if done is not None)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )


class ChunkMaker:
    """Stream chunks of one response: the same id, object, created time and model in each."""

    def __init__(self, generation: Generation, object_name: str, include_usage: bool) -> None:
        prepared = generation.prepared
        self._generation = generation
        self._include_usage = include_usage
        self._base = {
            "id": prepared.request_id,
            "object": object_name,
            "created": int(time.time()),
            "model": prepared.model.identifier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        chunk = {**self._base, "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None  # OpenAI: null on every chunk but the last
        return chunk

    def usage(self) -> dict[str, Any]:
        return {**self._base, "choices": [], "usage": self._generation.usage.model_dump()}


async def _merge(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, Event]]:
    """Interleave the events of several streams as they arrive, tagged with their index."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

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
