"""Coding agents on lmserve: OpenAI's Codex CLI and Anthropic's Claude Code, end to end.

The agents' real npm releases (pinned) run one non-interactive turn each against the real
server with Gemma 3 270M loaded at a context that fits their prompts (Claude Code's is about
78,000 characters).  Their first requests, captured from these versions, also check the
request mapping without a model (``tests/data``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmserve.api.anthropic.protocol import MessagesRequest
from lmserve.api.anthropic.service import chat_request
from lmserve.api.responses.protocol import ResponsesRequest
from lmserve.api.responses.service import ResponseTurn
from lmserve.models.default import GEMMA3_270M
from tests.conftest import GEMMA_ID, Server, install_model, start_server

DATA = Path(__file__).parent / "data"
CODEX = ("@openai/codex", "0.171.0")
CLAUDE_CODE = ("@anthropic-ai/claude-code", "2.1.197")
AGENT_TIMEOUT = 600.0  # seconds: Claude Code's 20,000-token prompt takes a minute to read


def captured(name: str) -> dict[str, object]:
    return json.loads((DATA / name).read_text())  # type: ignore[no-any-return]


# -- their requests, mapped (no model needed) ---------------------------------------------------


def test_codexs_request_maps_onto_a_chat_request() -> None:
    body = ResponsesRequest.model_validate(captured("codex-0.171.0-request.json"))
    chat = ResponseTurn(body, None).chat_request()
    offered = [tool.function.name for tool in chat.tools or []]
    assert "exec_command" in offered and "multi_agent_v1.spawn_agent" in offered
    assert body.hosted_tools == ["web_search"] and "web_search" not in offered
    assert [message.role for message in chat.messages] == [
        "developer",
        "developer",
        "user",
        "user",
    ]
    assert body.store is False and chat.stream is True


def test_claude_codes_request_maps_onto_a_chat_request() -> None:
    raw = captured("claude-code-2.1.197-request.json")
    body = MessagesRequest.model_validate(raw)
    chat = chat_request(body)
    assert [message.role for message in chat.messages] == ["system", "user"]
    inside = next(m for m in raw["messages"] if m["role"] == "system")  # type: ignore[index]
    assert isinstance(chat.messages[0].content, str)
    assert chat.messages[0].content.endswith(inside["content"])
    assert len(chat.tools or []) == 24 and chat.max_tokens == 32000
    assert body.thinking is not None and body.thinking.type == "adaptive"


# -- the agents themselves -----------------------------------------------------------------------


def agents_dir() -> Path:
    """Where the agents are installed: outside the repository, kept between runs."""
    configured = os.environ.get("LMSERVE_AGENTS_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "lmserve-agents"


def installed_version(root: Path, package: str) -> str | None:
    manifest = root / "node_modules" / package / "package.json"
    if not manifest.exists():
        return None
    return str(json.loads(manifest.read_text()).get("version"))


@pytest.fixture(scope="module")
def agent_bin() -> Path:
    root = agents_dir()
    wanted = [CODEX, CLAUDE_CODE]
    if any(installed_version(root, name) != version for name, version in wanted):
        npm = shutil.which("npm")
        assert npm, "npm is needed to install the agents (apt-get install nodejs npm)"
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", *(f"{n}@{v}" for n, v in wanted)],
            cwd=root,
            check=True,
            timeout=900,
            capture_output=True,
        )
    return root / "node_modules" / ".bin"


def gemma(tmp_path_factory: pytest.TempPathFactory, model_file: Path, *flags: str) -> Server:
    home = tmp_path_factory.mktemp("agents-home")
    install_model(home, model_file, GEMMA3_270M)
    return start_server(
        home,
        *("--model", GEMMA_ID, "--parallel", "1", "--context-length", "32768", *flags),
        timeout=300,
    )


@pytest.fixture(scope="module")
def gemma_server(
    tmp_path_factory: pytest.TempPathFactory, gemma_model_file: Path
) -> Iterator[Server]:
    server = gemma(tmp_path_factory, gemma_model_file)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def agent_server(
    tmp_path_factory: pytest.TempPathFactory, gemma_model_file: Path
) -> Iterator[Server]:
    """Gemma with prediction defaults that make a 270M base model end its turn.

    Neither agent sends a temperature or a stop string, and Codex no token limit: sampled at
    LM Studio's defaults, this model may write on to the end of its 32k context (10 minutes
    here), or past Claude Code's output limit, which the agent reports as an error.  Greedy, it
    starts its answer by repeating a line of the prompt; the stop string ends it there.
    """
    flags = ("--temperature", "0", "--stop", r"\n", "--max-tokens", "200")
    server = gemma(tmp_path_factory, gemma_model_file, *flags)
    try:
        yield server
    finally:
        server.stop()


def refused_requests(server: Server) -> dict[str, float]:
    """Requests answered 4xx or 5xx so far, by route and status, from ``/metrics``."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("lmserve_http_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            if re.search(r'status="[45]\d\d"', labels):
                counts[labels] = float(value)
    return counts


def test_codex_exec_answers_a_turn(agent_bin: Path, agent_server: Server, tmp_path: Path) -> None:
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'model = "{GEMMA_ID}"\n'
        'model_provider = "lmserve"\n'
        "[model_providers.lmserve]\n"
        'name = "lmserve"\n'
        f'base_url = "{agent_server.api_url}"\n'
        'wire_api = "responses"\n'
        'env_key = "LMSERVE_KEY"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    before = refused_requests(agent_server)
    run = subprocess.run(
        [str(agent_bin / "codex"), "exec", "--skip-git-repo-check", "Say hello."],
        cwd=work,
        env={**os.environ, "CODEX_HOME": str(home), "LMSERVE_KEY": "any"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=AGENT_TIMEOUT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip(), run.stderr  # the final message
    assert refused_requests(agent_server) == before, agent_server.log()


def test_claude_code_answers_a_turn(agent_bin: Path, agent_server: Server, tmp_path: Path) -> None:
    before = refused_requests(agent_server)
    run = subprocess.run(
        [str(agent_bin / "claude"), "-p", "Say hello.", "--model", GEMMA_ID],
        cwd=tmp_path,
        env={
            **os.environ,
            "HOME": str(tmp_path),
            "ANTHROPIC_BASE_URL": agent_server.base_url,
            "ANTHROPIC_API_KEY": "any",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            # Should the model not stop, fail at once rather than write 32,000 tokens.
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "200",
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=AGENT_TIMEOUT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip(), run.stderr
    assert refused_requests(agent_server) == before, agent_server.log()


# -- a tool call and its result, as each agent sends them ---------------------------------------
# Neither agent lets a test force a tool call, so their captured requests are sent through the
# official SDKs with the call forced (tool_choice), then again with the call and its result
# in the history, as the agent would send them next.


def test_codexs_request_with_a_forced_call_then_its_result(gemma_server: Server) -> None:
    from openai import OpenAI

    request = captured("codex-0.171.0-request.json")
    del request["stream"]
    turn = [*request["input"][:2], {"role": "user", "content": "What is my goal?"}]  # type: ignore[index]
    # A function without parameters: a 270M model fills a free-text argument without end.
    forced = {"type": "function", "name": "get_goal"}
    with OpenAI(base_url=gemma_server.api_url, api_key="any", max_retries=0) as sdk:
        # Fields this SDK version has no argument for (client_metadata...) go as extra body.
        first = sdk.responses.create(
            model=GEMMA_ID,
            extra_body={
                **request,
                "input": turn,
                "tool_choice": forced,
                "parallel_tool_calls": False,
                "max_output_tokens": 200,
            },
            timeout=AGENT_TIMEOUT,
        )
        (call,) = [item for item in first.output if item.type == "function_call"]
        assert call.name == "get_goal" and json.loads(call.arguments) == {}
        history = [
            *turn,
            *(item.to_dict() for item in first.output),
            {"type": "function_call_output", "call_id": call.call_id, "output": "Ship v1."},
        ]
        second = sdk.responses.create(
            model=GEMMA_ID,
            extra_body={**request, "input": history, "max_output_tokens": 60},
            timeout=AGENT_TIMEOUT,
        )
    assert second.status in {"completed", "incomplete"} and second.output
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


def test_claude_codes_request_with_a_forced_tool_use_then_its_result(
    gemma_server: Server,
) -> None:
    import anthropic

    request = captured("claude-code-2.1.197-request.json")
    del request["stream"]
    turn = [{"role": "user", "content": "What are my tasks?"}]
    forced = {"type": "tool", "name": "TaskList", "disable_parallel_tool_use": True}
    with anthropic.Anthropic(base_url=gemma_server.base_url, api_key="any", max_retries=0) as sdk:
        first = sdk.beta.messages.create(
            **{**request, "messages": turn, "tool_choice": forced, "max_tokens": 200},
            betas=["claude-code-20250219"],
            timeout=AGENT_TIMEOUT,
        )
        (use,) = [block for block in first.content if block.type == "tool_use"]
        assert use.name == "TaskList" and use.input == {}
        result = {"type": "tool_result", "tool_use_id": use.id, "content": "1. Ship v1."}
        messages = [
            *turn,
            {"role": "assistant", "content": [block.to_dict() for block in first.content]},
            {"role": "user", "content": [result]},
        ]
        second = sdk.beta.messages.create(
            **{**request, "messages": messages, "max_tokens": 60},
            betas=["claude-code-20250219"],
            timeout=AGENT_TIMEOUT,
        )
    assert second.stop_reason in {"end_turn", "max_tokens", "tool_use"}

    def whole(usage: anthropic.types.beta.BetaUsage) -> int:
        return usage.input_tokens + (usage.cache_read_input_tokens or 0)

    assert whole(second.usage) > whole(first.usage)
