"""Chat completions: messages through the model's chat template, answers in OpenAI's shape.

Every surface that converses is served through here: OpenAI's chat completions as they are
(:func:`chat_completion_turn`), and the Responses, Anthropic and LM Studio chat surfaces as a
chat request built from their own (:func:`build_chat_request`), whose answer and chunks their
:class:`ChatTurn` reshapes.  Nothing here knows HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from pydantic import ValidationError

from lmserve.api.common.errors import InvalidRequestError, validation_error
from lmserve.api.common.generation import ChunkMaker, Generation, Prepared, public_finish_reason
from lmserve.api.common.images import (
    image_marker,
    image_parts,
    no_vision_error,
    place_images,
    shown_prompt,
)
from lmserve.api.common.logprobs import chat_logprobs
from lmserve.api.common.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ImageContentPart,
    NamedToolChoice,
    ResponseFunctionCall,
    ResponseToolCall,
    TextContentPart,
)
from lmserve.api.common.reasoning import OPEN as REASONING_OPEN
from lmserve.api.common.reasoning import ReasoningSplitter, split_reasoning
from lmserve.api.common.serving import CompletionTurn
from lmserve.api.common.streaming import named_server_sent_events
from lmserve.api.common.structured import response_format_grammar
from lmserve.api.common.tools import (
    ToolCall,
    ToolCallStream,
    active_tools,
    arguments_object,
    call_grammar,
    history_call_text,
    parse_tool_calls,
    system_instructions,
    template_knows_tools,
    tool_call_deltas,
    tools_for_template,
)
from lmserve.engine.template import CHATML_TURN_MARKERS
from lmserve.engine.types import ImageInput, PromptImage, PromptProgress, TextDelta
from lmserve.models.loader import LoadedModel


def unsupported_content(message: str, param: str) -> InvalidRequestError:
    """The 400 for content the local text models cannot read (images, files, audio)."""
    return InvalidRequestError(message, param=param, code="unsupported_content")


def text_of(
    content: str | Sequence[Any] | None,
    text_part: type,
    refuse: Callable[[int], InvalidRequestError],
) -> str:
    """The text of a message's content: a string, or its ``text_part`` parts joined by lines.

    Any other part is refused with ``refuse(its index)``; every surface's content works so.
    """
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, text_part):
            raise refuse(index)
        texts.append(part.text)
    return "\n".join(texts)


def _content(message: ChatMessage, index: int, images: list[ImageInput]) -> str:
    """A message's content as text: its text parts joined by lines, each image as a marker
    of its own (:func:`image_marker`), its image appended to ``images``."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    text = ""
    after_image = False
    for position, part in enumerate(content):
        # Text parts joined by lines, an image's marker set right against its neighbours:
        # llama.cpp's way (common/chat.cpp), so both servers give a model the same prompt.
        if isinstance(part, TextContentPart):
            text += ("\n" if text and not after_image else "") + part.text
            after_image = False
        elif isinstance(part, ImageContentPart) and part.decoded is not None:
            text += image_marker(len(images))
            images.append(part.decoded)
            after_image = True
        else:
            # Images are read before a prompt is made (ImageReader.read), for models that see.
            raise unsupported_content(
                "This content is not supported: send text, and images to a vision model.",
                f"messages[{index}].content[{position}]",
            )
    return text


def template_messages(
    messages: list[ChatMessage],
    *,
    native_tools: bool = False,
    images: list[ImageInput] | None = None,
) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: ``role`` and string ``content``.

    With ``native_tools`` the template gets earlier tool calls and results in Hugging Face's
    structure; otherwise they are written into the text in the Hermes form the model was told.
    Each image becomes a marker in its message's text, and is appended to ``images``.
    """
    rendered = []
    found: list[ImageInput] = [] if images is None else images
    for index, message in enumerate(messages):
        content = _content(message, index, found)
        # OpenAI's "developer" role is the system role under a newer name.
        role = "system" if message.role == "developer" else message.role
        item: dict[str, Any] = {"role": role, "content": content}
        if message.name:
            item["name"] = message.name
        if message.role == "assistant" and message.tool_calls:
            if native_tools:
                item["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": arguments_object(call.function.arguments),
                        },
                    }
                    for call in message.tool_calls
                ]
            else:
                calls = "\n".join(
                    history_call_text(call.function.name, call.function.arguments)
                    for call in message.tool_calls
                )
                item["content"] = f"{content}\n{calls}".strip()
        if message.role == "tool":
            if native_tools:
                item["tool_call_id"] = message.tool_call_id
            else:
                item = {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
        rendered.append(item)
    return rendered


def _with_instructions(messages: list[dict[str, Any]], instructions: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{instructions}".strip()}
        return [first, *messages[1:]]
    return [{"role": "system", "content": instructions}, *messages]


async def prepare_chat(body: ChatCompletionRequest, model: LoadedModel) -> Prepared:
    """Render and tokenize the conversation (with its tools) and check it fits.

    Raises ``TemplateRenderError`` or :class:`InvalidRequestError`.
    """
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError(
            "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs"
        )
    final = body.messages[-1]
    if body.continue_final_message and (final.role != "assistant" or final.tool_calls):
        raise InvalidRequestError(
            "'continue_final_message' needs the last message to be an assistant's text.",
            param="continue_final_message",
        )
    tools = active_tools(body.tools, body.tool_choice)
    template = model.template
    native = bool(tools) and not template.is_fallback and template_knows_tools(template.source)
    first_image = next(image_parts(body), None)
    if first_image is not None and not model.vocab.vision:
        raise no_vision_error(model, first_image[0])
    images: list[ImageInput] = []
    messages = template_messages(body.messages, native_tools=native, images=images)
    if tools and not native:
        messages = _with_instructions(messages, system_instructions(tools))
    prompt = template.render(
        messages,
        continue_final_message=body.continue_final_message,
        tools=tools_for_template(tools) if native else None,
    )
    placed: tuple[PromptImage, ...] = ()
    if images:
        prompt, ordered = place_images(prompt, images)
        tokenized = await model.engine.tokenize_images(prompt, ordered)
        tokens, placed = tokenized.tokens, tokenized.images
        prompt = shown_prompt(prompt, placed)
    else:
        tokens = await model.engine.tokenize_prompt(prompt)
    forced = bool(tools) and (
        body.tool_choice == "required" or isinstance(body.tool_choice, NamedToolChoice)
    )
    grammar = (
        call_grammar(tools, body.parallel_tool_calls)
        if forced
        else response_format_grammar(body.response_format)
    )
    prepared = Prepared.of(
        body,
        model,
        [prompt],
        [tokens],
        id_prefix="chatcmpl",
        param="messages",
        what="messages",
        grammar=grammar,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    if template.is_fallback:
        # Special tokens end a turn of a model's own template; ChatML's markers are text to
        # a model without one (Gemma 3's base model), and it would write on past them.
        prepared.turn_end = CHATML_TURN_MARKERS
    prepared.tools = tools
    prepared.images = placed
    prepared.parallel_tool_calls = body.parallel_tool_calls
    prepared.starts_in_reasoning = prompt.rstrip().endswith(REASONING_OPEN)
    return prepared


def build_chat_request(**fields: Any) -> ChatCompletionRequest:
    """A chat request that a surface builds from its own; chat's bounds named as chat's.

    (A stored conversation, say, may have grown past chat's message cap.)
    """
    try:
        return ChatCompletionRequest(**fields)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def chat_completion_turn(body: ChatCompletionRequest) -> CompletionTurn:
    """OpenAI's chat completions, served: a :class:`ChatCompletion`, or its chunks."""
    return CompletionTurn(
        prepare_chat,
        chat_completion,
        lambda generation: chat_chunks(generation, body.include_usage),
    )


class ChatTurn:
    """A request of another API surface served as a chat completion under its own id.

    The Responses, Anthropic and LM Studio chat surfaces keep one per request: ``prepare``
    renders the chat request and names the log records after the surface's id; ``prepared``
    is then at hand for building that surface's objects.  Subclasses add ``respond`` and
    ``events`` (from :func:`chat_completion` and :func:`chat_chunks`); their streams are named
    events.
    """

    encode = staticmethod(named_server_sent_events)

    def __init__(self, turn_id: str) -> None:
        self.id = turn_id
        self._prepared: Prepared | None = None

    async def prepare(self, chat_body: ChatCompletionRequest, model: LoadedModel) -> Prepared:
        prepared = await prepare_chat(chat_body, model)
        prepared.request_id = self.id  # so the log stream names the surface's object
        self._prepared = prepared
        return prepared

    @property
    def prepared(self) -> Prepared:
        assert self._prepared is not None, "prepare() runs before any output is made"
        return self._prepared

    async def reasoning_tokens(self, reasoning: str, completion_tokens: int) -> int:
        """How many of the completion's tokens were reasoning.

        The engine counts a completion's tokens as a whole; the reasoning's share is counted
        again from its text (at most the whole).
        """
        if not reasoning:
            return 0
        tokens = await self.prepared.model.engine.tokenize(reasoning, add_special=False)
        return min(len(tokens), completion_tokens)


def _calls(prepared: Prepared, calls: list[ToolCall]) -> list[ToolCall]:
    return calls if prepared.parallel_tool_calls else calls[:1]


def _logprobs(generation: Generation, index: int) -> dict[str, Any] | None:
    top = generation.prepared.logprobs
    if top is None:
        return None
    return {"content": chat_logprobs(generation.logprobs[index], top), "refusal": None}


def _message(prepared: Prepared, text: str) -> tuple[AssistantMessage, bool]:
    reasoning, answer = split_reasoning(text, prepared.starts_in_reasoning)
    calls: list[ToolCall] = []
    content: str | None = answer
    if prepared.tools:
        content, calls = parse_tool_calls(answer, prepared.tools)
        calls = _calls(prepared, calls)
    message = AssistantMessage(
        content=content,
        reasoning_content=reasoning,
        tool_calls=[
            ResponseToolCall(
                id=call.id, function=ResponseFunctionCall(name=call.name, arguments=call.arguments)
            )
            for call in calls
        ]
        or None,
    )
    return message, bool(calls)


async def chat_completion(generation: Generation) -> ChatCompletion:
    results = await generation.collect()
    prepared = generation.prepared
    choices = []
    for index, (text, done) in enumerate(results):
        finish = public_finish_reason(done)
        message, called = _message(prepared, text)
        choices.append(
            Choice(
                index=index,
                message=message,
                logprobs=_logprobs(generation, index),
                finish_reason="tool_calls" if called else finish,
            )
        )
    return generation.answer(ChatCompletion, choices)


async def chat_chunks(
    generation: Generation, include_usage: bool, *, progress: bool = False
) -> AsyncIterator[dict[str, Any]]:
    """``chat.completion.chunk`` dicts: role first, then deltas (reasoning, content, tool
    calls), a finish reason per choice, and the usage chunk if asked.  With ``progress``,
    also ``{"prompt_progress": PromptProgress}`` while a long prompt is read, for a surface
    that shows it (OpenAI's chunks have no place for it)."""
    prepared = generation.prepared
    chunks = ChunkMaker(generation, "chat.completion.chunk", include_usage)
    top = prepared.logprobs
    n = len(generation.streams)
    splitters = [ReasoningSplitter(prepared.starts_in_reasoning) for _ in range(n)]
    tool_streams = [ToolCallStream(prepared.tools) if prepared.tools else None for _ in range(n)]

    def choice(
        index: int,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return chunks.choice(
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        )

    def content_deltas(index: int, text: str) -> list[dict[str, Any]]:
        deltas = []
        reasoning, answer = splitters[index].feed(text)
        if reasoning:
            deltas.append({"reasoning_content": reasoning})
        stream = tool_streams[index]
        if stream is not None:
            answer = stream.feed(answer)
        if answer:
            deltas.append({"content": answer})
        return deltas

    for index in range(n):
        yield choice(index, {"role": "assistant", "content": ""})
    events = generation.events_with_progress() if progress else generation.events()
    async for index, event in events:
        if isinstance(event, PromptProgress):
            yield {"prompt_progress": event}
            continue
        if isinstance(event, TextDelta):
            logprobs = (
                {"content": chat_logprobs(event.logprobs, top), "refusal": None}
                if top is not None
                else None
            )
            deltas = content_deltas(index, event.text)
            for position, delta in enumerate(deltas):
                yield choice(index, delta, logprobs=logprobs if position == 0 else None)
            continue
        finish = public_finish_reason(event)
        reasoning, answer = splitters[index].finish()
        if reasoning:
            yield choice(index, {"reasoning_content": reasoning})
        stream = tool_streams[index]
        calls: list[ToolCall] = []
        if stream is not None:
            answer = stream.feed(answer)
            rest, calls = stream.finish()
            answer += rest
            calls = _calls(prepared, calls)
        if answer:
            yield choice(index, {"content": answer})
        for call_index, call in enumerate(calls):
            for delta in tool_call_deltas(call_index, call):
                yield choice(index, {"tool_calls": [delta]})
        yield choice(index, {}, "tool_calls" if calls else finish)
    if include_usage:
        yield chunks.usage()
