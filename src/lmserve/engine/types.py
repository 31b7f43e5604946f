"""The engine's boundary: what a request asks for and what comes back.

The HTTP layer only sees these types: it submits a :class:`GenerationRequest`, iterates over
its :class:`GenerationStream` as tokens are produced, and cancels it.  The engine behind it
runs in a worker process (:mod:`lmserve.engine.client`); the same types cross the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lmserve.config import PredictionDefaults

FinishReason = Literal["stop", "length", "cancelled", "error"]
# Why generation ended, in LM Studio's words (its ``stats.stop_reason``).
StopReason = Literal[
    "eosFound",
    "stopStringFound",
    "maxPredictedTokensReached",
    "contextLengthReached",
    "userStopped",
    "failed",
]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token.  Defaults are LM Studio's."""

    temperature: float = PredictionDefaults.temperature
    top_k: int = PredictionDefaults.top_k
    top_p: float = PredictionDefaults.top_p
    min_p: float = PredictionDefaults.min_p
    repeat_penalty: float = PredictionDefaults.repeat_penalty
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    grammar: str | None = None  # GBNF the output must match (structured output, tool calls)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def describe(self) -> dict[str, Any]:
        """The settings as the log stream shows them (whether a grammar constrains the output,
        not the grammar itself)."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "repeat_last_n": self.repeat_last_n,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logit_bias": {str(token): bias for token, bias in self.logit_bias},
            "seed": self.seed,
            "grammar": self.grammar is not None,
        }

    @property
    def penalised(self) -> bool:
        return (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


_request_numbers = itertools.count(1)

# Where each image goes in a rendered prompt: random per server process (its workers are told
# it), as llama-server does, so that text in a message can never stand in for an image.
MEDIA_MARKER = f"<__media_{secrets.token_hex(6)}__>"


@dataclass(frozen=True)
class ImageInput:
    """An image for a vision model, decoded: what the projector encodes.

    ``id`` names it by the hash of the bytes it was sent as, so two sends of one image are
    one image to the prefix and prompt caches, and two different images never are.
    """

    id: str  # hex digest of the image's bytes as sent
    width: int
    height: int
    rgb: bytes  # width * height * 3 bytes, row by row


@dataclass(frozen=True)
class PromptImage:
    """Where an image sits in a tokenized prompt: ``n_pos`` positions from ``start``, which
    the prompt's token list fills with placeholders (negative ids, never a vocabulary's),
    derived from the image's id so that only the same image matches them."""

    image: ImageInput
    start: int
    n_pos: int
    n_tokens: int  # embeddings the projector makes (n_pos, but for M-RoPE projectors)

    @property
    def end(self) -> int:
        return self.start + self.n_pos


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt's tokens, with its images' placeholders, and where each image is."""

    tokens: list[int]
    images: tuple[PromptImage, ...] = ()


@dataclass
class GenerationRequest:
    """One sequence to generate: a tokenized prompt and when to stop."""

    prompt_tokens: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # The prompt's images, for a vision model: their placeholders are in prompt_tokens.
    images: tuple[PromptImage, ...] = ()
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    # Text that ends the model's turn as its end-of-generation token would, not reported as a
    # stop string (ChatML's markers, for a model that has them as text only).
    turn_end: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; n: each token's and its n likeliest rivals'
    # Speculative decoding by prompt lookup: None as the engine decides (its mode), False never,
    # True whenever the text so far offers a draft.
    speculative: bool | None = None
    # A draft model (its name as the worker loaded it: see EngineWorker.load_draft) to draft
    # with instead of prompt lookup.
    draft_model: str | None = None
    number: int = field(default_factory=lambda: next(_request_numbers))
    label: str | None = None  # the API's id of the request it serves, for the server log


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and its likeliest rivals."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """Text produced since the previous event, and the tokens it came from."""

    text: str
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class PromptProgress:
    """A long prompt read in part: sent after each chunk of it but the last (whose first
    token follows at once), so a client can show progress while it waits."""

    processed: int  # prompt tokens in the slot's cache, reused ones included
    total: int

    @property
    def fraction(self) -> float:
        return self.processed / self.total if self.total else 1.0


@dataclass
class DraftCounts:
    """What happened to a request's draft tokens, in LM Studio's stats' terms.

    Accepted: the sampler picked the drafted token.  Rejected: it picked another (the first
    difference in a draft).  Ignored: never checked, because an earlier token of the same
    draft was rejected or generation stopped first.  The three add up to the total.
    """

    total: int = 0
    accepted: int = 0
    rejected: int = 0
    ignored: int = 0
    model: str | None = None  # the draft model's name; None: drafted by prompt lookup

    def add(self, drafted: int, accepted: int, rejected: int) -> None:
        self.total += drafted
        self.accepted += accepted
        self.rejected += rejected
        self.ignored += drafted - accepted - rejected


@dataclass(frozen=True)
class Finished:
    """The last event of every request."""

    finish_reason: FinishReason
    stop_reason: StopReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    time_to_first_token: float | None
    generation_seconds: float
    error: str | None = None
    stopped_by: str | None = None  # the stop string that ended generation, if one did
    # Failed because the engine closed (unload, shutdown): worth trying again, unlike a bug.
    unavailable: bool = False
    # Failed because the engine's worker process died (a crash in llama.cpp, a kill).
    crashed: bool = False
    # Refused before it ran, as a request the engine cannot serve (a grammar it cannot build
    # for this model): the client's error, not the server's.
    refused: bool = False
    drafts: DraftCounts | None = None  # None: the request did not draft (speculation off)
    # Of the cached tokens, those restored from the prompt cache's tiers (the rest: a slot's).
    cached_from_memory: int = 0
    cached_from_disk: int = 0
    # The Ray Serve replica that ran it (``x-lmserve-replica``): a replicated model's only.
    replica: str | None = None

    @classmethod
    def failure(
        cls,
        request: GenerationRequest,
        error: str,
        *,
        completion_tokens: int = 0,
        unavailable: bool = False,
        crashed: bool = False,
        refused: bool = False,
    ) -> Finished:
        """The last event of a request that failed outside a decode step (refused, or its
        engine closed or died)."""
        return cls(
            finish_reason="error",
            stop_reason="failed",
            prompt_tokens=len(request.prompt_tokens),
            completion_tokens=completion_tokens,
            cached_tokens=0,
            time_to_first_token=None,
            generation_seconds=0.0,
            error=error,
            unavailable=unavailable,
            crashed=crashed,
            refused=refused,
        )

    @property
    def tokens_per_second(self) -> float | None:
        if self.completion_tokens <= 1 or self.generation_seconds <= 0:
            return None
        return (self.completion_tokens - 1) / self.generation_seconds


Event = TextDelta | PromptProgress | Finished


class GenerationStream:
    """The asynchronous end of one request: iterate for events, ``cancel()`` to stop early.

    Events reach it through an :class:`Outbox`, from the engine thread or from the thread
    that reads a worker process's pipe, so the event loop is never blocked by generation.
    ``on_cancel`` tells an engine in another process that the request was cancelled.
    """

    def __init__(
        self,
        request: GenerationRequest,
        loop: asyncio.AbstractEventLoop,
        outbox: Outbox,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self.request = request
        self.loop = loop
        self._outbox = outbox
        self._on_cancel = on_cancel
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.finished: Finished | None = None
        self.completion_tokens = 0  # as of the last text event, for a crash's report
        self.replica: str | None = None  # the replica that runs it, when a model has several
        self.placed = asyncio.Event()  # set once it is known (or never will be)

    def cancel(self) -> None:
        """Ask the engine to stop this request; it frees the slot within one decode step."""
        if self.cancelled:
            return
        self.cancelled = True
        if self._on_cancel is not None and self.finished is None:
            self._on_cancel()

    def place(self, replica: str | None) -> None:
        """Say which replica runs this request (None: it ended before any did)."""
        if replica is not None:
            self.replica = replica
        self.placed.set()

    def publish(self, event: Event) -> None:
        """Called from the engine thread; delivered when the engine flushes its outbox."""
        self._outbox.put(self, event)

    def deliver(self, event: Event) -> None:
        """Called on the event loop."""
        self._queue.put_nowait(event)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while self.finished is None:
            event = await self._queue.get()
            if isinstance(event, Finished):
                self.finished = event
            yield event


def _deliver_all(items: list[tuple[GenerationStream, Event]]) -> None:
    for stream, event in items:
        stream.deliver(event)


class Outbox:
    """Events of one engine step, handed to the event loop in one wake-up.

    Waking the event loop once per token, while llama.cpp's threads occupy every core,
    preempts a compute thread each time and slows the decode step measurably (41 ms instead
    of 31-36 ms for 8 sequences on 2 cores); once per step costs almost nothing.
    """

    def __init__(self) -> None:
        self._items: list[tuple[GenerationStream, Event]] = []

    def put(self, stream: GenerationStream, event: Event) -> None:
        self._items.append((stream, event))

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationStream, Event]]] = {}
        for stream, event in items:
            by_loop.setdefault(stream.loop, []).append((stream, event))
        for loop, batch in by_loop.items():
            # A closed event loop raises RuntimeError: nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver_all, batch)


class RequestHandle(Protocol):
    """The engine's view of a submitted request: what to generate, whether to stop, where
    its events go.  A :class:`GenerationStream` in process; a stand-in in a worker process."""

    @property
    def request(self) -> GenerationRequest: ...

    @property
    def cancelled(self) -> bool: ...

    def publish(self, event: Event) -> None: ...


class EngineError(RuntimeError):
    """Base class of the engine's own errors.

    - :class:`QueueFullError`: every slot is busy and the queue is full (try again soon).
    - :class:`EngineClosedError`: the engine is closing or closed (unload, shutdown).
    - :class:`EngineCrashedError`: the engine's worker process died.
    - :class:`GrammarError`: a grammar could not be built for the model.
    - :class:`DraftModelError`: a draft model's vocabulary is not the model's.
    - :class:`WorkerStartError`: a worker process could not load its model.
    - :class:`ImageError`: an image the model's projector cannot take.
    - :class:`RerankInputError`: a query/document pair too long for a reranker.
    """


class QueueFullError(EngineError):
    """Every slot is busy and the waiting queue is at its bound."""


class EngineClosedError(EngineError):
    """The engine is shutting down and takes no new requests."""


class EngineCrashedError(EngineClosedError):
    """The engine's worker process died (a signal, an abort, an out-of-memory kill)."""


class GrammarError(EngineError, ValueError):
    """A grammar could not be built for the model (llguidance's words say why)."""


class ImageError(EngineError, ValueError):
    """An image the model cannot take: no projector, or one it refused to encode."""


class RerankInputError(EngineError, ValueError):
    """A document whose pair with the query does not fit the reranker's context."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"documents[{index}] with the query is {tokens} tokens; this reranker takes "
            f"{limit} at most"
        )
        self.index, self.tokens, self.limit = index, tokens, limit

    def __reduce__(self) -> tuple[type, tuple[int, int, int]]:
        return type(self), (self.index, self.tokens, self.limit)


class DraftModelError(EngineError, ValueError):
    """A draft model cannot draft for the model: its vocabulary is another."""


class WorkerStartError(EngineError):
    """A worker process could not load its model: ``crashed`` if it died doing so,
    ``self_check`` if the model loaded but the hardware self-check failed."""

    def __init__(self, message: str, *, crashed: bool = False, self_check: bool = False) -> None:
        super().__init__(message)
        self.crashed = crashed
        self.self_check = self_check

    @property
    def retry_without_repack(self) -> bool:
        """Whether weight repacking may be the cause (anything but a clean load error)."""
        return self.crashed or self.self_check
