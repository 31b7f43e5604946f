"""The ``predict`` channel: ``respond``, ``respond_stream``, ``complete`` and each round of
``act``, served as a chat completion (or, with a client's prompt template, a text completion)
through the same engine, templates, log stream and limits as the REST API.

Packets, in LM Studio's order: ``promptProcessingProgress`` while a long prompt is read,
``fragment`` per piece of text (reasoning marked as such), the ``toolCallGeneration*`` events
of each tool call the model made, then ``success`` with the stats, the instance, and the
load and prediction configs used.  A ``cancel`` stops the engine within a step, and the
prediction still ends with ``success`` (stop reason ``userStopped``), as the SDKs expect.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from lmserve.api.common.chat import build_chat_request, chat_chunks, prepare_chat
from lmserve.api.common.completions import prepare_completion
from lmserve.api.common.errors import validation_error
from lmserve.api.common.generation import Generation, Prepared, public_finish_reason
from lmserve.api.common.protocol import CompletionRequest, GenerationRequestFields
from lmserve.api.common.serving import start_generation
from lmserve.api.common.structured import gbnf_to_grammar, schema_to_grammar
from lmserve.api.lmstudio_ws.errors import SDKError, preset_not_found
from lmserve.api.lmstudio_ws.files import FileStore
from lmserve.api.lmstudio_ws.history import chat_messages, render_with_template
from lmserve.api.lmstudio_ws.info import instance_info, wanted_name
from lmserve.api.lmstudio_ws.kvconfig import (
    Prediction,
    flatten,
    load_config,
    prediction,
    prediction_config,
    with_system_prompt,
)
from lmserve.api.lmstudio_ws.protocol import PredictParameter
from lmserve.api.lmstudio_ws.session import Channel, Context
from lmserve.engine.types import Finished, PromptProgress, TextDelta
from lmserve.models.loader import LoadedModel


class CountedGeneration(Generation):
    """A generation that remembers how many tokens the text read so far came from, so each
    fragment can say how many it holds."""

    tokens_read = 0

    async def events_with_progress(self) -> AsyncIterator[tuple[int, Any]]:
        async for index, event in super().events_with_progress():
            if isinstance(event, TextDelta):
                self.tokens_read = event.completion_tokens
            yield index, event


class PredictTurn:
    """The prompt of one prediction: the model's chat template, or the client's own."""

    def __init__(self, param: PredictParameter, settings: Prediction) -> None:
        self.param = param
        self.settings = settings

    async def prepare(self, body: Any, model: LoadedModel) -> Prepared:
        if self.settings.template is not None:
            prompt = render_with_template(
                self.param.history, self.settings.template, model.template
            )
            prepared = await prepare_completion(body.model_copy(update={"prompt": prompt}), model)
            schema = self.settings.json_schema
            if schema is not None and self.settings.gbnf is None:
                grammar = schema_to_grammar(schema, "llm.prediction.structured.jsonSchema")
                prepared.sampling = replace(prepared.sampling, grammar=grammar)
        else:
            prepared = await prepare_chat(body, model)
        if self.settings.gbnf is not None:
            grammar = gbnf_to_grammar(self.settings.gbnf, "llm.prediction.structured.gbnfGrammar")
            prepared.sampling = replace(prepared.sampling, grammar=grammar)
        return prepared


def _request(
    name: str, param: PredictParameter, settings: Prediction, files: FileStore
) -> GenerationRequestFields:
    fields = dict(settings.fields)
    if settings.template is not None:
        stops = [*(fields.pop("stop", None) or []), *settings.template_stops]
        for key in ("tools", "tool_choice", "response_format"):
            fields.pop(key, None)
        fields.setdefault("max_tokens", None)  # not OpenAI's 16: until the model stops
        try:
            # The prompt is rendered once the model is known (its BOS and EOS texts).
            return CompletionRequest(model=name, prompt=" ", stop=stops or None, **fields)
        except ValidationError as exc:
            raise validation_error(exc) from exc
    messages = with_system_prompt(chat_messages(param.history, files), settings.system_prompt)
    return build_chat_request(model=name, messages=messages, **fields)


def _fragment(content: str, tokens: int, reasoning: bool = False) -> dict[str, Any]:
    return {
        "type": "fragment",
        "fragment": {
            "content": content,
            "tokensCount": tokens,
            "containsDrafted": False,
            "reasoningType": "reasoning" if reasoning else "none",
            "isStructural": False,
        },
    }


def _tool_call_packets(call: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of one finished tool call; a call whose arguments are not a JSON object
    fails, as LM Studio reports a call it cannot parse."""
    arguments = call["arguments"]
    raw = json.dumps({"name": call["name"], "arguments": arguments}, ensure_ascii=False)
    packets: list[dict[str, Any]] = [
        {"type": "toolCallGenerationStart", "toolCallId": call["id"]},
        {"type": "toolCallGenerationNameReceived", "name": call["name"]},
    ]
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        error = SDKError(
            f"The model's call of {call['name']!r} has arguments that are not an object."
        )
        return [
            *packets,
            {"type": "toolCallGenerationFailed", "error": error.body(), "rawContent": raw},
        ]
    request = {"id": call["id"], "type": "function", "name": call["name"], "arguments": parsed}
    return [
        *packets,
        {"type": "toolCallGenerationArgumentFragmentGenerated", "content": arguments},
        {"type": "toolCallGenerationEnd", "toolCallRequest": request, "rawContent": raw},
    ]


class PredictionStream:
    """One prediction on its channel: streams packets from the generation's chunks."""

    def __init__(self, channel: Channel, generation: CountedGeneration) -> None:
        self.channel = channel
        self.generation = generation
        self.tokens_sent = 0
        self.calls: dict[int, dict[str, Any]] = {}

    def _tokens(self) -> int:
        count = self.generation.tokens_read - self.tokens_sent
        self.tokens_sent = self.generation.tokens_read
        return count

    async def chat(self) -> None:
        chunks = chat_chunks(self.generation, include_usage=False, progress=True)
        async for chunk in chunks:
            if "prompt_progress" in chunk:
                await self._progress(chunk["prompt_progress"])
                continue
            delta = chunk["choices"][0]["delta"]
            if piece := delta.get("reasoning_content"):
                await self.channel.send(_fragment(piece, self._tokens(), reasoning=True))
            if piece := delta.get("content"):
                await self.channel.send(_fragment(piece, self._tokens()))
            for call in delta.get("tool_calls") or []:
                held = self.calls.setdefault(call["index"], {"arguments": ""})
                held.update({key: call[key] for key in ("id",) if key in call})
                function = call.get("function") or {}
                if "name" in function:
                    held["name"] = function["name"]
                held["arguments"] += function.get("arguments") or ""
        for index in sorted(self.calls):
            for packet in _tool_call_packets(self.calls[index]):
                await self.channel.send(packet)

    async def text(self) -> None:
        async for _, event in self.generation.events_with_progress():
            if isinstance(event, PromptProgress):
                await self._progress(event)
            elif isinstance(event, TextDelta) and event.text:
                await self.channel.send(_fragment(event.text, self._tokens()))
            elif isinstance(event, Finished):
                public_finish_reason(event)  # raises if it failed

    async def _progress(self, progress: PromptProgress) -> None:
        fraction = round(progress.fraction, 4)
        await self.channel.send({"type": "promptProcessingProgress", "progress": fraction})

    def stats(self, started_at: float) -> dict[str, Any]:
        finished = self.generation.finished[0]
        assert finished is not None
        stats: dict[str, Any] = {
            "stopReason": "toolCalls" if self.calls else finished.stop_reason,
            "tokensPerSecond": finished.tokens_per_second,
            "timeToFirstTokenSec": finished.time_to_first_token,
            "totalTimeSec": round(time.perf_counter() - started_at, 4),
            "promptTokensCount": finished.prompt_tokens,
            "predictedTokensCount": finished.completion_tokens,
            "totalTokensCount": finished.prompt_tokens + finished.completion_tokens,
        }
        if finished.drafts is not None:
            stats["usedDraftModelKey"] = finished.drafts.model
            stats["totalDraftTokensCount"] = finished.drafts.total
            stats["acceptedDraftTokensCount"] = finished.drafts.accepted
            stats["rejectedDraftTokensCount"] = finished.drafts.rejected
            stats["ignoredDraftTokensCount"] = finished.drafts.ignored
        return {key: value for key, value in stats.items() if value is not None}


async def predict(ctx: Context, param: PredictParameter, channel: Channel) -> None:
    started_at = time.perf_counter()
    if param.fuzzyPresetIdentifier is not None:
        raise preset_not_found(param.fuzzyPresetIdentifier)
    models = ctx.models
    config = flatten(param.predictionConfigStack)
    settings = prediction(config)
    body = _request(wanted_name(param.modelSpecifier, models, "llm"), param, settings, ctx.files)
    started = await start_generation(
        models,
        ctx.logs,
        body,
        PredictTurn(param, settings),
        make=CountedGeneration,
        images=ctx.state.images,
    )
    generation = started.generation
    assert isinstance(generation, CountedGeneration)

    async def cancel_when_asked() -> None:
        await channel.cancelled.wait()
        generation.cancel()

    watcher = asyncio.ensure_future(cancel_when_asked())
    streaming = PredictionStream(channel, generation)
    try:
        if settings.template is not None:
            await streaming.text()
        else:
            await streaming.chat()
        model = generation.prepared.model
        await channel.send(
            {
                "type": "success",
                "stats": streaming.stats(started_at),
                "modelInfo": instance_info(models, model, "llm"),
                "loadModelConfig": load_config(model, "llm"),
                "predictionConfig": prediction_config(
                    generation.prepared, config.get("llm.prediction.structured")
                ),
            }
        )
    finally:
        watcher.cancel()
        started.finish()
