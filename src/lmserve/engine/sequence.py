"""One request inside the engine: its prompt, its sampler, its text so far, when it stops."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lmserve.engine.llama import LlamaModel
from lmserve.engine.sampling import SamplerChain
from lmserve.engine.speculative import DraftState
from lmserve.engine.text import StopMatcher, Utf8Assembler
from lmserve.engine.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    PromptImage,
    RequestHandle,
    StopReason,
    TextDelta,
    TokenLogprob,
)

_FINISH_REASONS: dict[StopReason, FinishReason] = {
    "eosFound": "stop",
    "stopStringFound": "stop",
    "maxPredictedTokensReached": "length",
    "contextLengthReached": "length",
    "userStopped": "cancelled",
    "failed": "error",
}


@dataclass
class Sequence:
    """A request being served: owned by the engine thread once submitted."""

    stream: RequestHandle
    chain: SamplerChain
    prompt: list[int]
    submitted: float = field(default_factory=time.perf_counter)
    next_prompt_index: int = 0  # first prompt token not yet in the KV cache
    cached_tokens: int = 0  # prompt tokens reused from the cache instead of computed
    # Of those, restored from the prompt cache's memory and disk tiers (the rest were in a slot).
    restored_from_memory: int = 0
    restored_from_disk: int = 0
    started: bool = False  # has computed any of its own prompt tokens
    pending_token: int | None = None  # sampled, to be decoded in the next step
    # Tokens guessed to follow the pending one, decoded with it to be checked (speculation).
    draft: list[int] = field(default_factory=list)
    row: int | None = None  # batch row of the pending token's logits (drafts' follow it)
    drafting: DraftState | None = None  # None: this request never drafts
    generated: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    utf8: Utf8Assembler = field(default_factory=Utf8Assembler)
    stops: StopMatcher | None = None
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    stopped_by: str | None = None
    # The prompt's images by where they start (their placeholders are in ``prompt``).
    images: dict[int, PromptImage] = field(default_factory=dict)

    @classmethod
    def create(cls, model: LlamaModel, stream: RequestHandle, seed: int) -> Sequence:
        request = stream.request
        chain = SamplerChain(model, request.sampling, seed)
        images = {image.start: image for image in request.images}
        # Penalties count the prompt's text: an image's placeholders are no vocabulary's.
        chain.remember(
            [t for t in request.prompt_tokens if t >= 0] if images else request.prompt_tokens
        )
        sequence = cls(
            stream=stream, chain=chain, prompt=list(request.prompt_tokens), images=images
        )
        if request.stop or request.turn_end:
            sequence.stops = StopMatcher((*request.stop, *request.turn_end))
        return sequence

    @property
    def request(self) -> GenerationRequest:
        return self.stream.request

    @property
    def prefilling(self) -> bool:
        return self.next_prompt_index < len(self.prompt)

    def image_at(self, index: int) -> PromptImage | None:
        """The image whose placeholders start at prompt index ``index``, if one does."""
        return self.images.get(index) if self.images else None

    def text_end(self, index: int) -> int:
        """Where the run of text tokens from prompt index ``index`` ends: the next image's
        start, or the prompt's end."""
        starts = [start for start in self.images if start >= index]
        return min(starts, default=len(self.prompt))

    def resumable(self, length: int) -> int:
        """The longest prefix of at most ``length`` prompt tokens that ends between images,
        not inside one (an image is decoded whole)."""
        for image in self.images.values():
            if image.start < length < image.end:
                return image.start
        return length

    def accept(
        self, model: LlamaModel, token: int, now: float, logprob: TokenLogprob | None = None
    ) -> StopReason | None:
        """Take one sampled token: publish its text; say why to stop, if it is time."""
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        if model.is_eog(token):
            return "eosFound"
        self.generated += 1
        if logprob is not None:
            self.pending_logprobs.append(logprob)
        text = self.utf8.feed(model.piece(token))
        if self.stops is not None and text:
            text, stopped = self.stops.feed(text)
            if stopped:
                self._publish_text(text)
                reason = self._stopped(self.stops.stopped_by)
                self.stops = None  # nothing held back remains to flush
                return reason
        self._publish_text(text)
        limit = self.request.max_tokens
        if limit is not None and self.generated >= limit:
            return "maxPredictedTokensReached"
        self.pending_token = token
        if self.drafting is not None:
            self.drafting.lookup.append(token)
        return None

    def finish(
        self, reason: StopReason, error: str | None = None, *, unavailable: bool = False
    ) -> None:
        """Publish what is held back and the final event; free the sampler."""
        if reason != "failed":
            tail = self.utf8.flush()
            if self.stops is not None:
                text, stopped = self.stops.feed(tail)
                tail = text if stopped else text + self.stops.flush()
                if stopped:
                    reason = self._stopped(self.stops.stopped_by)
            self._publish_text(tail)
        first, last = self.first_token_at, self.last_token_at
        self.stream.publish(
            Finished(
                finish_reason=_FINISH_REASONS[reason],
                stop_reason=reason,
                prompt_tokens=len(self.prompt),
                completion_tokens=self.generated,
                cached_tokens=self.cached_tokens,
                cached_from_memory=self.restored_from_memory,
                cached_from_disk=self.restored_from_disk,
                time_to_first_token=(first - self.submitted) if first is not None else None,
                generation_seconds=(last - first) if first is not None and last else 0.0,
                error=error,
                stopped_by=self.stopped_by,
                unavailable=unavailable,
                drafts=self.drafting.counts if self.drafting is not None else None,
            )
        )
        self.chain.close()

    def _stopped(self, found: str | None) -> StopReason:
        """Why a matched string ended the request: one of the client's stop strings, or the
        end of the model's turn written as text (as the end-of-generation token would)."""
        if found in self.request.turn_end:
            return "eosFound"
        self.stopped_by = found
        return "stopStringFound"

    def _publish_text(self, text: str) -> None:
        # Log-probabilities travel with the text their tokens became; a token whose text is
        # held back (half a character, a possible stop string) waits for it.
        if text:
            logprobs, self.pending_logprobs = tuple(self.pending_logprobs), []
            self.stream.publish(TextDelta(text, self.generated, logprobs))
