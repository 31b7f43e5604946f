"""Text completions: a raw prompt, no chat template (OpenAI's ``/v1/completions`` and LM
Studio's ``/api/v0/completions``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.generation import ChunkMaker, Generation, Prepared, public_finish_reason
from lmserve.api.common.logprobs import completion_logprobs
from lmserve.api.common.protocol import CompletionChoice, CompletionRequest, TextCompletion
from lmserve.api.common.serving import CompletionTurn
from lmserve.api.common.structured import response_format_grammar
from lmserve.engine.types import TextDelta
from lmserve.models.loader import LoadedModel


async def _prompts(
    body: CompletionRequest, model: LoadedModel
) -> tuple[list[str], list[list[int]]]:
    """Each prompt's text and tokens, from any of the four shapes OpenAI accepts."""
    prompt = body.prompt
    engine, vocab = model.engine, model.vocab
    if not isinstance(prompt, str) and not prompt:
        raise InvalidRequestError("The prompt list is empty.", param="prompt")
    if isinstance(prompt, str):
        texts = [prompt]
    elif prompt and all(isinstance(item, int) for item in prompt):
        token_lists = [list(prompt)]  # type: ignore[arg-type]
        texts = []
    elif prompt and all(isinstance(item, list) for item in prompt):
        token_lists = [list(item) for item in prompt]  # type: ignore[union-attr]
        texts = []
    else:
        texts = [str(item) for item in prompt]
    if texts:
        # Special tokens written in the prompt are parsed, as llama.cpp's server does, so a
        # hand-written chat format works; BOS is added as the model asks.
        token_lists = [await engine.tokenize(text, add_special=vocab.add_bos) for text in texts]
    else:
        for index, tokens in enumerate(token_lists):
            if not tokens or any(token >= vocab.n_vocab for token in tokens):
                raise InvalidRequestError(
                    f"Prompt {index} has no tokens or a token id outside the vocabulary "
                    f"(0 to {vocab.n_vocab - 1}).",
                    param="prompt",
                )
        texts = [await engine.detokenize(tokens) for tokens in token_lists]
    if any(not tokens for tokens in token_lists):
        raise InvalidRequestError("The prompt is empty.", param="prompt")
    return texts, token_lists


async def _with_suffix(
    body: CompletionRequest, model: LoadedModel, texts: list[str], tokens: list[list[int]]
) -> list[list[int]]:
    """Fill-in-the-middle: prefix and suffix around the model's FIM tokens."""
    if body.suffix is None:
        return tokens
    fim = model.vocab.fim_tokens
    if fim is None:
        raise InvalidRequestError(
            "This model has no fill-in-the-middle tokens, so 'suffix' is not supported.",
            param="suffix",
            code="unsupported_value",
        )
    prefix_token, suffix_token, middle_token = fim
    suffix = await model.engine.tokenize(body.suffix, add_special=False)
    return [
        [
            prefix_token,
            *await model.engine.tokenize(text, add_special=False),
            suffix_token,
            *suffix,
            middle_token,
        ]
        for text in texts
    ]


async def prepare_completion(body: CompletionRequest, model: LoadedModel) -> Prepared:
    texts, tokens = await _prompts(body, model)
    tokens = await _with_suffix(body, model, texts, tokens)
    return Prepared.of(
        body,
        model,
        texts,
        tokens,
        id_prefix="cmpl",
        param="prompt",
        what="prompt",
        logprobs=body.logprobs,
        # vLLM's and llama-server's extension: the completion follows a JSON schema.
        grammar=response_format_grammar(body.response_format),
    )


def _echo(generation: Generation, index: int, body: CompletionRequest) -> str:
    if not body.echo:
        return ""
    return generation.prepared.prompts[index // generation.prepared.n]


async def text_completion(generation: Generation, body: CompletionRequest) -> TextCompletion:
    results = await generation.collect()
    choices = [
        CompletionChoice(
            index=index,
            text=_echo(generation, index, body) + text,
            logprobs=(
                completion_logprobs(generation.logprobs[index], len(_echo(generation, index, body)))
                if body.logprobs is not None
                else None
            ),
            finish_reason=public_finish_reason(done),
        )
        for index, (text, done) in enumerate(results)
    ]
    return generation.answer(TextCompletion, choices)


async def completion_chunks(
    generation: Generation, body: CompletionRequest
) -> AsyncIterator[dict[str, Any]]:
    """``text_completion`` chunks: the echo (if asked), text pieces, finish, usage."""
    chunks = ChunkMaker(generation, "text_completion", body.include_usage)

    offsets = [len(_echo(generation, index, body)) for index in range(len(generation.streams))]

    def choice(
        index: int, text: str, finish: str | None = None, event: TextDelta | None = None
    ) -> dict[str, Any]:
        logprobs = None
        if body.logprobs is not None and event is not None:
            logprobs = completion_logprobs(event.logprobs, offsets[index])
            offsets[index] += len(text)
        return chunks.choice(
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        )

    if body.echo:
        for index in range(len(generation.streams)):
            yield choice(index, _echo(generation, index, body))
    async for index, event in generation.events():
        if isinstance(event, TextDelta):
            yield choice(index, event.text, event=event)
        else:
            yield choice(index, "", public_finish_reason(event))
    if body.include_usage:
        yield chunks.usage()


def text_completion_turn(body: CompletionRequest) -> CompletionTurn:
    """Text completions, served: a :class:`TextCompletion`, or its chunks."""
    return CompletionTurn(
        prepare_completion,
        lambda generation: text_completion(generation, body),
        lambda generation: completion_chunks(generation, body),
    )
