"""LM Studio's native REST API: what its routes answer, in LM Studio's shapes.

Response shapes follow LM Studio's documentation; where lmserve knows more (slots, TTL, JIT,
crashes) it adds fields rather than changing the documented ones.  The v0 completions are
OpenAI's with LM Studio's ``stats``, ``model_info`` and ``runtime`` added
(:class:`WithStats`); ``/api/v1/chat`` is a stateful conversation (:class:`NativeChatTurn`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any

from lmserve.api.common.chat import build_chat_request, chat_completion
from lmserve.api.common.conversation import ConversationStore, ConversationTurn
from lmserve.api.common.errors import InvalidRequestError, NotFoundError
from lmserve.api.common.generation import (
    Generation,
    Prepared,
    draft_stats,
    replica_of,
    stats_of,
)
from lmserve.api.common.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    ImageContentPart,
    NamedToolChoice,
    TextContentPart,
    ToolDefinition,
    parts_content,
)
from lmserve.api.common.replicas import ReplicaLines, public_line
from lmserve.api.common.serving import Turn
from lmserve.api.common.tool_loop import ToolRounds, collect_last, configured_use, url_use
from lmserve.api.lmstudio.events import chat_events
from lmserve.api.lmstudio.protocol import (
    DownloadRequest,
    EphemeralMcpIntegration,
    ImageInput,
    NamedTool,
    NativeChatRequest,
    PluginIntegration,
)
from lmserve.config import McpSettings
from lmserve.mcp.servers import McpServers
from lmserve.models.catalog import CatalogEntry
from lmserve.models.download_jobs import DownloadJobs
from lmserve.models.hub import resolve_plan
from lmserve.models.loader import LoadedModel
from lmserve.models.manager import ModelManager
from lmserve.plugins import PluginNotFound, Plugins, PluginUse
from lmserve.toolsource import ToolUse

RUNTIME = {
    "name": "llama.cpp-cpu",
    "version": f"llama-cpp-python {importlib.metadata.version('llama_cpp_python')}",
    "supported_formats": ["gguf"],
}

# -- v1: models ---------------------------------------------------------------------------------


def _params_string(entry: CatalogEntry) -> str | None:
    label = entry.header.metadata.get("general.size_label")
    if isinstance(label, str) and label:
        return label
    count = entry.header.parameter_count
    if not count:
        return None
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def instance(model: LoadedModel, replicas: ReplicaLines | None = None) -> dict[str, Any]:
    """A loaded instance: its identifier and configuration, slots and engine included (a
    replicated model's slots are each replica's; ``replicas`` lists them)."""
    found: dict[str, Any] = {"id": model.identifier}
    if replicas and model.identifier in replicas:
        found["replicas"] = [public_line(line) for line in replicas[model.identifier]]
    return {
        **found,
        "config": {
            **model.config,
            "ttl": model.ttl,
            "ttl_remaining": model.ttl_remaining(),
            "jit": model.jit,
            "slots": model.engine.n_slots,
            "slots_busy": model.engine.busy_slots,
            "queue_depth": model.engine.queue_depth,
            "engine_pid": model.engine.pid,
            "draft_model": model.draft_model,
            "vision": model.vision,
        },
    }


def _v1_model(
    entry: CatalogEntry, key: str, instances: list[LoadedModel], replicas: ReplicaLines
) -> dict[str, Any]:
    header = entry.header
    params = header.parameter_count
    template = header.chat_template or ""
    item: dict[str, Any] = {
        "type": "embedding" if entry.model_type == "embeddings" else "llm",
        "publisher": entry.publisher,
        "key": key,
        "display_name": header.metadata.get("general.name") or key,
        "architecture": header.architecture,
        "quantization": {
            "name": entry.quantization,
            "bits_per_weight": round(entry.size_bytes * 8 / params, 2) if params else None,
        },
        "size_bytes": entry.size_bytes,
        "params_string": _params_string(entry),
        "loaded_instances": [instance(model, replicas) for model in instances],
        "max_context_length": header.context_length,
        "format": "gguf",
        "path": entry.relative_path,
    }
    if item["type"] == "llm":
        vision = entry.vision or any(model.vision for model in instances)
        item["capabilities"] = {"vision": vision, "trained_for_tool_use": "tools" in template}
        item["description"] = None
    return item


def v1_models(models: ModelManager, replicas: ReplicaLines) -> dict[str, Any]:
    """Downloaded models (LLMs and embedding models), each with its loaded instances (a
    replicated one's with its replicas)."""
    catalog = models.rescan()
    loaded = models.loaded()
    items = [
        _v1_model(
            entry,
            catalog.public_id(entry),
            [model for model in loaded if model.entry.path == entry.path],
            replicas,
        )
        for entry in catalog.entries
    ]
    known = {entry.path for entry in catalog.entries}
    items += [
        _v1_model(model.entry, model.identifier, [model], replicas)
        for model in loaded
        if model.entry.path not in known  # loaded, then deleted from disk
    ]
    # lmserve's addition: models whose engine crashed lately, loaded again or not.
    return {"models": items, "crashed": models.crashes.report()}


async def start_download(
    body: DownloadRequest, models: ModelManager, downloads: DownloadJobs
) -> dict[str, Any]:
    """A download job for a Hugging Face model, unless its files are here already."""
    plan = await asyncio.to_thread(
        resolve_plan, body.model, models_root=models.models_root, quantization=body.quantization
    )
    if await asyncio.to_thread(plan.already_present):
        return {"status": "already_downloaded", "files": [str(p) for p in plan.targets]}
    return downloads.start(plan).describe()


# -- v0 -----------------------------------------------------------------------------------------


def _v0_model(
    entry: CatalogEntry,
    key: str,
    loaded: LoadedModel | None,
    replicas: ReplicaLines | None = None,
) -> dict[str, Any]:
    vision = loaded.vision if loaded is not None else entry.vision
    item: dict[str, Any] = {
        "id": key,
        "object": "model",
        # LM Studio's types: llm, vlm (a language model that sees), embeddings.
        "type": "vlm" if vision else entry.model_type,
        "publisher": entry.publisher,
        "arch": entry.header.architecture,
        "compatibility_type": "gguf",
        "quantization": entry.quantization,
        "state": "loaded" if loaded is not None else "not-loaded",
        "max_context_length": entry.header.context_length,
    }
    if loaded is not None:
        item["loaded_context_length"] = loaded.n_ctx
        if replicas and loaded.identifier in replicas:
            item["replicas"] = [public_line(line) for line in replicas[loaded.identifier]]
    return item


def v0_models(models: ModelManager, replicas: ReplicaLines) -> list[dict[str, Any]]:
    """All loaded and downloaded models, the loaded ones first."""
    catalog = models.rescan()
    loaded = models.loaded()
    items = []
    for model in loaded:
        items.append(_v0_model(model.entry, model.identifier, model, replicas))
    loaded_paths = {model.entry.path for model in loaded}
    for entry in catalog.entries:
        if entry.path not in loaded_paths:
            items.append(_v0_model(entry, catalog.public_id(entry), None))
    return items


def v0_model(models: ModelManager, name: str, replicas: ReplicaLines) -> dict[str, Any]:
    loaded = models.find_loaded(name)
    if loaded is not None:
        return _v0_model(loaded.entry, loaded.identifier, loaded, replicas)
    entry = models.resolve_entry(name)
    if entry is None:
        why = models.catalog.not_a_model(name) or f"No model named '{name}'."
        raise NotFoundError(why, param="model", code="model_not_found")
    return _v0_model(entry, models.catalog.public_id(entry), None)


def _extras(generation: Generation) -> dict[str, Any]:
    model = generation.prepared.model
    first = generation.finished[0]
    return {
        "stats": stats_of(first) if first is not None else {},
        "model_info": {
            "arch": model.entry.header.architecture,
            "quant": model.entry.quantization,
            "format": "gguf",
            "context_length": model.n_ctx,
        },
        "runtime": RUNTIME,
    }


class WithStats:
    """A chat or text completion with LM Studio's ``stats``, ``model_info`` and ``runtime``:
    beside the answer's fields, or in a last chunk of the stream."""

    def __init__(self, turn: Turn[Any]) -> None:
        self.turn = turn
        self.encode = turn.encode

    async def prepare(self, body: Any, model: LoadedModel) -> Prepared:
        return await self.turn.prepare(body, model)

    async def respond(self, generation: Generation) -> dict[str, Any]:
        completion = await self.turn.respond(generation)
        assert not isinstance(completion, dict)  # chat and text completions are models
        return {**completion.model_dump(), **_extras(generation)}

    async def events(self, generation: Generation) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self.turn.events(generation):
            yield chunk
        yield {
            "id": generation.prepared.request_id,
            "object": "stats",
            "choices": [],
            **_extras(generation),
        }


# -- v1: chat -----------------------------------------------------------------------------------

ChatThreads = ConversationStore[list[ChatMessage]]


def user_content(body: NativeChatRequest) -> str | list[ContentPart]:
    """The input as the user message's content: its texts and images, in order.  The thread
    keeps the message as it is, images included, for the next request."""
    parts = [
        ImageContentPart.of(item.data_url)
        if isinstance(item, ImageInput)
        else TextContentPart(type="text", text=item.content)
        for item in body.input
    ]
    return parts_content(parts)


class NativeChatTurn(ConversationTurn[list[ChatMessage]]):
    """One native chat request: its result, and the thread (chat messages) it extends.

    With ``integrations`` (MCP servers: ``mcp/<name>`` of mcp.json, or ``ephemeral_mcp`` by
    URL) the server runs the model's calls in rounds (:attr:`rounds`), and the result lists
    each call as a ``tool_call`` item between the model's messages.
    """

    def __init__(self, body: NativeChatRequest, threads: ChatThreads | None) -> None:
        super().__init__(body, threads)
        self.body = body
        self.messages: list[ChatMessage] = []
        self.rounds: ToolRounds | None = None
        self.content = user_content(body)  # the input, as plugins' preprocessors leave it

    def earlier(self) -> list[ChatMessage]:
        """The thread's messages before this input (its system prompt, unless this request
        brings another)."""
        system = bool(self.body.system_prompt)
        return [m for m in self.previous or [] if not (system and m.role == "system")]

    def chat_request(
        self, server_tools: list[ToolDefinition] | None = None
    ) -> ChatCompletionRequest:
        """The thread so far and this input, as one chat request (with the MCP servers'
        tools, when the request names some)."""
        body = self.body
        system = (
            [ChatMessage(role="system", content=body.system_prompt)] if body.system_prompt else []
        )
        choice = body.tool_choice
        chat_body = build_chat_request(
            messages=[*system, *self.earlier(), ChatMessage(role="user", content=self.content)],
            tools=server_tools or None,
            tool_choice=NamedToolChoice.of(choice.name)
            if isinstance(choice, NamedTool)
            else choice,
            **self.chat_fields(),
        )
        self.messages = chat_body.messages
        return chat_body

    async def result(self, generation: Generation, output: list[dict[str, Any]]) -> dict[str, Any]:
        finished = generation.finished[0]
        usage = (
            self.rounds.usage if self.rounds is not None and self.rounds.usage else generation.usage
        )
        reasoning = "".join(item["content"] for item in output if item["type"] == "reasoning")
        result: dict[str, Any] = {
            "model_instance_id": self.prepared.model.identifier,
            "output": output,
            "stats": {
                "input_tokens": usage.prompt_tokens,
                "total_output_tokens": usage.completion_tokens,
                "reasoning_output_tokens": await self.reasoning_tokens(
                    reasoning, usage.completion_tokens
                ),
                "tokens_per_second": finished.tokens_per_second if finished else None,
                "time_to_first_token_seconds": finished.time_to_first_token if finished else None,
                **(draft_stats(finished) if finished else {}),
                **(replica_of(finished) if finished else {}),
            },
        }
        if self.stores:
            # The thread keeps the calls and their results, for the next turn's model.
            messages = self.rounds.body.messages if self.rounds is not None else self.messages
            answer = output[-1]["content"] if output[-1]["type"] == "message" else ""
            self.save([*messages, ChatMessage(role="assistant", content=answer)])
            result["response_id"] = self.id
        return result

    async def respond(self, generation: Generation) -> dict[str, Any]:
        if self.rounds is not None:
            end = await collect_last(chat_events(self, generation, in_band_errors=False))
            return end["result"]  # type: ignore[no-any-return]
        completion = await chat_completion(generation)
        message = completion.choices[0].message
        output = [{"type": "reasoning", "content": message.reasoning_content}]
        output = output if message.reasoning_content else []
        output.append({"type": "message", "content": message.content or ""})
        return await self.result(generation, output)

    def events(self, generation: Generation) -> AsyncIterator[dict[str, Any]]:
        return chat_events(self, generation)


def integration_uses(
    body: NativeChatRequest, settings: McpSettings, servers: McpServers, plugins: Plugins
) -> list[ToolUse]:
    """The tool sources a request's ``integrations`` name: ``mcp/<name>`` (a plugin id, alone
    or as ``{"type": "plugin"}``) from mcp.json, ``ephemeral_mcp`` by URL, and registered
    plugins by ``owner/name`` (a 400 ``plugin_not_found`` naming those there are, if none)."""
    uses: list[ToolUse] = []
    for item in body.integrations or []:
        if isinstance(item, EphemeralMcpIntegration):
            uses.append(
                url_use(
                    settings,
                    item.server_label,
                    item.server_url,
                    headers=item.headers,
                    allowed_tools=item.allowed_tools,
                    provider={"type": "ephemeral_mcp", "server_label": item.server_label},
                    param="integrations",
                )
            )
            continue
        plugin = (
            item
            if isinstance(item, PluginIntegration)
            else PluginIntegration(type="plugin", id=item)
        )
        if not plugin.id.startswith("mcp/"):
            try:
                plugins.get(plugin.id)
            except PluginNotFound as exc:
                raise InvalidRequestError(
                    f"{exc} A plugin is registered while it runs (python -m lmstudio.plugin "
                    "--dev PATH); the MCP servers of mcp.json are mcp/<name>.",
                    param="integrations",
                    code="plugin_not_found",
                ) from None
            allowed = tuple(plugin.allowed_tools) if plugin.allowed_tools is not None else None
            provider = {"type": "plugin", "plugin_id": plugin.id}
            uses.append(PluginUse(plugin.id, allowed_tools=allowed, provider=provider))
            continue
        uses.append(
            configured_use(
                settings,
                servers,
                plugin.id.removeprefix("mcp/"),
                allowed_tools=plugin.allowed_tools,
                provider={"type": "plugin", "plugin_id": plugin.id},
                param="integrations",
            )
        )
    return uses
