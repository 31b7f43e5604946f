"""Tools the server runs (MCP servers', plugins'): the rounds of one turn, model → calls →
results → model.

A surface that lets a request name MCP servers (LM Studio's ``integrations``, the Responses
``mcp`` tools, Anthropic's ``mcp_servers``) or LM Studio plugins (``integrations``) offers
their tools to the model beside the client's
own functions (:func:`offered_tools`) and serves the turn through :class:`ToolRounds`.  Each
round is one generation; when the model calls server tools, the calls run (at once), their
results are appended to the conversation as tool messages, which the model's chat template
renders, and the model runs again.  A round that calls a client's function, asks for approval
or calls nothing ends the turn; after ``max_rounds`` rounds of calls the model is run once more
without the server's tools, so it must answer.  A ``tool_choice`` that forces a call applies
to the first round only (as OpenAI's Agents SDK resets it), so a forced call cannot loop.

:meth:`ToolRounds.events` yields the chat stream's chunks of every round (less the server
calls' deltas and the finish of every round but the last) and, between rounds, the calls as
:class:`CallStarted`, :class:`CallFinished` and :class:`ApprovalRequested`; each surface turns
both into its own events and items.  Every call and result is a log record
(``mcp.call``, ``mcp.result``), as every round's prompt and answer are.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request

from lmserve.api.common.chat import chat_chunks
from lmserve.api.common.errors import InvalidRequestError, PermissionDeniedError
from lmserve.api.common.generation import Generation
from lmserve.api.common.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionDefinition,
    PromptTokensDetails,
    ToolCall,
    ToolDefinition,
    Usage,
)
from lmserve.api.common.serving import serve_generation, start_generation
from lmserve.config import McpSettings
from lmserve.logbus import LogBus
from lmserve.mcp.config import LABEL_PATTERN, ServerSpec
from lmserve.mcp.servers import McpServers
from lmserve.mcp.toolset import CallOutcome, ServedTool, ServerUse, Toolset, build_toolset
from lmserve.plugins import Plugins, PluginUse
from lmserve.toolsource import ToolSource, ToolUse

# A request's own cap on rounds of calls may be at most this (the server's default is 8).
MAX_TOOL_ROUNDS = 64


@dataclass(frozen=True)
class CallStarted:
    call_id: str
    tool: ServedTool
    arguments: str


@dataclass(frozen=True)
class CallFinished:
    call_id: str
    outcome: CallOutcome


@dataclass(frozen=True)
class ApprovalRequested:
    """A call the client must approve before it runs (the Responses ``require_approval``)."""

    call_id: str
    tool: ServedTool
    arguments: str


LoopEvent = CallStarted | CallFinished | ApprovalRequested


def url_use(
    settings: McpSettings,
    label: str,
    url: str,
    *,
    headers: dict[str, str] | None,
    allowed_tools: Sequence[str] | None,
    provider: dict[str, str],
    param: str,
) -> ServerUse:
    """A server a request names by URL: a 403 naming the flag unless the server allows them."""
    if not settings.allow_urls:
        raise PermissionDeniedError(
            "MCP servers named by URL in a request are off: start the server with "
            "--allow-mcp-urls to allow them.",
            param=param,
            code="mcp_not_allowed",
        )
    if not url.startswith(("http://", "https://")):
        raise InvalidRequestError(
            f"The MCP server '{label}' must be an http(s) URL, not {url[:80]!r}.", param=param
        )
    spec = ServerSpec(label, url=url, headers=dict(headers or {}))
    allowed = tuple(allowed_tools) if allowed_tools is not None else None
    return ServerUse(spec, allowed_tools=allowed, provider=provider)


def configured_use(
    settings: McpSettings,
    servers: McpServers,
    name: str,
    *,
    allowed_tools: Sequence[str] | None,
    provider: dict[str, str],
    param: str,
) -> ServerUse:
    """A server of mcp.json by name: a 403 naming the flag unless the server allows them, a
    400 naming the servers there are if there is none of that name."""
    if not settings.allow_config:
        raise PermissionDeniedError(
            "The MCP servers of mcp.json are off for API requests: start the server with "
            "--allow-mcp-json to allow them.",
            param=param,
            code="mcp_not_allowed",
        )
    configured = servers.configured()
    spec = configured.get(name)
    if spec is None:
        known = ", ".join(sorted(configured)) or "none"
        raise InvalidRequestError(
            f"There is no MCP server '{name}' in {servers.config_path} (there are: {known}).",
            param=param,
            code="mcp_server_not_found",
        )
    allowed = tuple(allowed_tools) if allowed_tools is not None else None
    return ServerUse(spec, allowed_tools=allowed, configured=True, provider=provider)


def check_labels(uses: Sequence[ToolUse], param: str) -> None:
    """A 400 for two MCP servers of one request under one label (it names their calls)."""
    labels = [use.label for use in uses if isinstance(use, ServerUse)]
    for label in labels:
        if not LABEL_PATTERN.match(label):
            raise InvalidRequestError(
                f"The MCP server label {label!r} may hold letters, digits, '_', '.' and '-' "
                "(64 at most).",
                param=param,
            )
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise InvalidRequestError(
            f"Two MCP servers share the label '{repeated[0]}'; give each its own.", param=param
        )


def offered_tools(toolset: Toolset) -> list[ToolDefinition]:
    """The toolset's tools as chat tools, under the names the model calls them by."""
    return [
        ToolDefinition(
            function=FunctionDefinition(
                name=tool.offered_name,
                description=tool.description,
                parameters=tool.input_schema,
            )
        )
        for tool in toolset.tools
    ]


def _added(total: Usage | None, usage: Usage) -> Usage:
    if total is None:
        return usage
    return Usage(
        prompt_tokens=total.prompt_tokens + usage.prompt_tokens,
        completion_tokens=total.completion_tokens + usage.completion_tokens,
        total_tokens=total.total_tokens + usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=total.prompt_tokens_details.cached_tokens
            + usage.prompt_tokens_details.cached_tokens
        ),
    )


@dataclass
class _Round:
    """What one round's chunks said: its text, the calls it made, its held-back chunks."""

    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"id", "name", "arguments"}
    held: list[dict[str, Any]] = field(default_factory=list)  # client calls' deltas
    finish: dict[str, Any] | None = None


# Starts a round: the chat request, to the generation serving it and the function that
# releases it.
RoundStarter = Callable[[ChatCompletionRequest], Awaitable[tuple[Generation, Callable[[], None]]]]


class ToolRounds:
    """The rounds of one turn (see the module's docstring).

    ``body`` is the first round's chat request (its tools include the server's);
    ``start`` starts each later round; ``needs_approval`` says which calls wait for the
    client; ``max_calls`` caps the calls run in the turn (the Responses ``max_tool_calls``:
    further calls are dropped, and the model runs on without the server's tools).
    """

    def __init__(
        self,
        toolset: Toolset,
        body: ChatCompletionRequest,
        start: RoundStarter,
        logs: LogBus,
        *,
        request_id: str,
        max_rounds: int,
        max_calls: int | None = None,
        needs_approval: Callable[[ServedTool], bool] | None = None,
        progress: bool = False,
    ) -> None:
        self.toolset = toolset
        self.body = body
        self.start = start
        self.logs = logs
        self.request_id = request_id
        self.max_rounds = max_rounds
        self.max_calls = max_calls
        self.needs_approval = needs_approval
        self.progress = progress
        self.usage: Usage | None = None
        self.rounds = 0  # rounds whose calls ran
        self.calls_run = 0
        self.last: Generation | None = None
        self._release: Callable[[], None] | None = None

    def _server_tools_left(self) -> bool:
        calls_left = self.max_calls is None or self.calls_run < self.max_calls
        return self.rounds < self.max_rounds and calls_left

    async def events(self, first: Generation) -> AsyncIterator[dict[str, Any] | LoopEvent]:
        """Every round's chunks and calls; the last chunk is the turn's finish."""
        generation = first
        body = self.body
        try:
            while True:
                self.last = generation
                current = _Round()
                async for chunk in chat_chunks(
                    generation, include_usage=False, progress=self.progress
                ):
                    if self._hold(chunk, current):
                        continue
                    yield chunk
                self.usage = _added(self.usage, generation.usage)
                ran, stop = [], False
                async for event in self._calls(current):
                    yield event
                    if isinstance(event, CallFinished):
                        ran.append(event)
                    elif isinstance(event, ApprovalRequested):
                        stop = True
                client_calls = [call for call in current.calls if not self._is_server(call)]
                if not ran or stop or client_calls:
                    for chunk in current.held:
                        yield chunk
                    if current.finish is not None:
                        # Calls of the client's own functions are the only ones it is asked
                        # to make: with none, the turn just ends.
                        choice = current.finish["choices"][0]
                        if not client_calls and choice["finish_reason"] == "tool_calls":
                            choice["finish_reason"] = "stop"
                        yield current.finish
                    return
                self.rounds += 1
                body = self.body = self._next_body(body, current, ran)
                self._finish_round()
                generation, self._release = await self.start(body)
        finally:
            self._finish_round()

    def _finish_round(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def _is_server(self, call: dict[str, Any]) -> bool:
        return self.toolset.find(call["name"]) is not None

    def _hold(self, chunk: dict[str, Any], current: _Round) -> bool:
        """Keep a round's calls and finish back until the round is over."""
        choices = chunk.get("choices")
        if not choices:
            return False
        choice = choices[0]
        delta = choice["delta"]
        if delta.get("content"):
            current.text += delta["content"]
        if choice.get("finish_reason") is not None:
            current.finish = chunk
            return True
        deltas = delta.get("tool_calls")
        if not deltas:
            return False
        for part in deltas:
            if part.get("id"):
                current.calls.append({"id": part["id"], "name": part["function"]["name"]})
                current.calls[-1]["arguments"] = ""
            elif current.calls:
                current.calls[-1]["arguments"] += part["function"].get("arguments") or ""
        if not self._is_server(current.calls[-1]):
            current.held.append(chunk)
        return True

    async def _calls(self, current: _Round) -> AsyncIterator[LoopEvent]:
        """The round's server calls: approvals asked for, the rest run at once."""
        to_run: list[tuple[str, ServedTool, str]] = []
        for call in current.calls:
            tool = self.toolset.find(call["name"])
            if tool is None:
                continue
            if self.needs_approval is not None and self.needs_approval(tool):
                yield ApprovalRequested(call["id"], tool, call["arguments"])
                continue
            if self.max_calls is not None and self.calls_run + len(to_run) >= self.max_calls:
                continue  # beyond max_tool_calls: dropped, as OpenAI ignores them
            to_run.append((call["id"], tool, call["arguments"]))
        # All run at once; their events come one call after another, in the model's order.
        for call_id, tool, arguments in to_run:
            _log_call(self.logs, self.request_id, call_id, tool, arguments)
        tasks = [
            asyncio.ensure_future(_called(self.toolset, self.logs, self.request_id, [call]))
            for call in to_run
        ]
        self.calls_run += len(to_run)
        try:
            for (call_id, tool, arguments), task in zip(to_run, tasks, strict=True):
                yield CallStarted(call_id, tool, arguments)
                (outcome,) = await task
                yield CallFinished(call_id, outcome)
        finally:
            for task in tasks:
                task.cancel()  # the client is gone: no call is waited for

    def _next_body(
        self, body: ChatCompletionRequest, current: _Round, ran: list[CallFinished]
    ) -> ChatCompletionRequest:
        """The conversation with this round's calls and their results, for the next round."""
        calls = [
            ToolCall.of(event.call_id, event.outcome.tool.offered_name, event.outcome.arguments)
            for event in ran
        ]
        messages = [
            *body.messages,
            ChatMessage(role="assistant", content=current.text or None, tool_calls=calls),
            *(
                ChatMessage(
                    role="tool", tool_call_id=event.call_id, content=event.outcome.for_model
                )
                for event in ran
            ),
        ]
        update: dict[str, Any] = {"messages": messages, "tool_choice": None}
        if not self._server_tools_left():
            names = {tool.offered_name for tool in self.toolset.tools}
            client_tools = [tool for tool in body.tools or [] if tool.function.name not in names]
            update["tools"] = client_tools or None
        return body.model_copy(update=update)


def _log_call(
    logs: LogBus, request_id: str, call_id: str, tool: ServedTool, arguments: str
) -> None:
    logs.publish(
        "mcp.call",
        request_id=request_id,
        call_id=call_id,
        server_label=tool.server_label,
        tool=tool.name,
        arguments=arguments,
    )


async def _called(
    toolset: Toolset, logs: LogBus, request_id: str, calls: Sequence[tuple[str, ServedTool, str]]
) -> list[CallOutcome]:
    """The calls' outcomes (run at once), each result logged."""
    outcomes = await asyncio.gather(
        *(toolset.call(tool, arguments) for _, tool, arguments in calls)
    )
    for (call_id, tool, _), outcome in zip(calls, outcomes, strict=True):
        logs.publish(
            "mcp.result",
            request_id=request_id,
            call_id=call_id,
            server_label=tool.server_label,
            tool=tool.name,
            output=outcome.output,
            error=outcome.error,
            seconds=round(outcome.seconds, 3),
        )
    return list(outcomes)


async def run_calls(
    toolset: Toolset, logs: LogBus, request_id: str, calls: Sequence[tuple[str, ServedTool, str]]
) -> list[CallOutcome]:
    """Run ``(call_id, tool, arguments)`` calls at once; each call and result is a log
    record."""
    for call_id, tool, arguments in calls:
        _log_call(logs, request_id, call_id, tool, arguments)
    return await _called(toolset, logs, request_id, calls)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


async def collect_last(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The last of a surface's events (its final answer), the stream run to its end."""
    last: dict[str, Any] | None = None
    async for event in events:
        last = event
    assert last is not None, "a surface's events end with its answer"
    return last


class ToolTurn(Protocol):
    """A surface's turn served with server tools: its id, and where its rounds go."""

    id: str
    rounds: ToolRounds | None


async def serve_with_tools(
    request: Request,
    turn: ToolTurn,
    uses: Sequence[ToolUse],
    make_body: Callable[[list[ToolDefinition]], ChatCompletionRequest],
    *,
    param: str,
    max_rounds: int | None,
    max_calls: int | None = None,
    needs_approval: Callable[[ServedTool], bool] | None = None,
    reserved_names: Sequence[str] = (),
    progress: bool = False,
    before: Callable[[Toolset], Awaitable[None]] | None = None,
) -> Any:
    """Serve ``turn`` with the tools of the MCP servers and plugins ``uses`` names.

    The servers (from :func:`url_use` and :func:`configured_use`, which check the server's
    flags) and plugins (:class:`PluginUse`: their tools providers) are connected and listed
    (424 if one cannot be), and their tools given to
    ``make_body``, which makes the first round's chat request; the turn's
    :class:`ToolRounds` then run the rounds.  Per-request connections close when the answer
    is over.  ``max_rounds`` 0 offers the model no server tools at all.
    """
    state = request.app.state
    settings: McpSettings = state.mcp_settings
    check_labels(uses, param)
    servers: McpServers = state.mcp
    plugins: Plugins = state.plugins

    async def connect(use: ToolUse) -> tuple[ToolSource, bool]:
        if isinstance(use, PluginUse):
            return await plugins.tools_session(use), True
        assert isinstance(use, ServerUse)
        return await servers.connect(use)

    toolset = await build_toolset(uses, connect, reserved_names)
    rounds = settings.max_tool_rounds if max_rounds is None else max_rounds
    try:
        if before is not None:
            await before(toolset)  # calls approved by the client, say, before the first round
        body = make_body(offered_tools(toolset) if rounds else [])

        async def start(next_body: ChatCompletionRequest) -> tuple[Generation, Callable[[], None]]:
            started = await start_generation(
                state.models, state.logs, next_body, turn, images=state.images
            )
            return started.generation, started.finish

        turn.rounds = ToolRounds(
            toolset,
            body,
            start,
            state.logs,
            request_id=turn.id,
            max_rounds=rounds,
            max_calls=max_calls,
            needs_approval=needs_approval,
            progress=progress,
        )
    except BaseException:
        await toolset.close()
        raise
    return await serve_generation(request, body, turn, after=toolset.close)  # type: ignore[arg-type]
