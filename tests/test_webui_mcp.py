"""MCP servers on the chat page, in a real browser against the real server: lmserve with
``--allow-mcp-json`` and an mcp.json whose stdio server is ``tests/mcp_fixture.py``. A server
switched on in a conversation's settings is kept with it; the answer comes through
``/v1/responses`` and shows the call (server, tool, arguments, output) as a block, which a
reload shows again; the next answer gives the call back to the model.

The small model rarely calls a tool on its own: the conversation's ``tool_choice`` names the
fixture's tool, which forces the first round's call; ``--max-tool-rounds 1`` keeps it from
calling again and again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, install_default_model, start_server
from tests.test_mcp import NONCE, write_mcp_json
from tests.webui_browser import (  # noqa: F401 (the *_fixture names are fixtures)
    LogRecords,
    browser_fixture,
    current_id,
    open_page,
    page_fixture,
    records_fixture,
    send,
    settings,
    stored,
    wait_for_answers,
)


@pytest.fixture(scope="module", name="webui_server")
def mcp_webui_server_fixture(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    install_default_model(home, default_model_file)
    write_mcp_json(home, home / "stdio.pid")
    server = start_server(home, "--allow-mcp-json", "--max-tool-rounds", "1", "--parallel", "2")
    try:
        yield server
    finally:
        server.stop()


def call_block(page: Any) -> Any:
    """The last answer's MCP call, opened."""
    block = page.locator(".message.assistant").last.locator("details.mcp-call")
    assert block.count() == 1
    block.locator("summary").click()
    return block


def test_an_mcp_call_shows_is_kept_and_goes_back_to_the_model(
    page: Any, webui_server: Server, records: LogRecords
) -> None:
    open_page(page)
    page.click("#toggle-settings")
    assert page.is_visible("#mcp-servers")
    page.check("#mcp-list input[value='local']")
    page.click("#toggle-settings")
    settings(page, tool_choice="secret_word", temperature=0, max_tokens=48)
    send(page, "What is the secret word for apples?")
    wait_for_answers(page)
    block = call_block(page)
    assert "local · secret_word" in block.locator("summary").inner_text()
    assert "topic" in block.locator("pre.arguments").inner_text()
    assert NONCE in block.locator("pre.output").inner_text()

    ident = current_id(page)
    conversation = stored(webui_server, ident)
    assert conversation["settings"]["mcp_servers"] == ["local"]
    answer = conversation["messages"][1]
    assert answer["meta"]["request_id"].startswith("resp_")  # through /v1/responses
    assert [(c["server_label"], c["name"]) for c in answer["mcp_calls"]] == [
        ("local", "secret_word")
    ]
    assert NONCE in answer["mcp_calls"][0]["output"]
    # What the model received, under the answer: the last round's prompt, with the result.
    assert NONCE in answer["meta"]["prompt"]

    page.reload()
    page.wait_for_selector("html[data-ready]")
    assert NONCE in call_block(page).locator("pre.output").inner_text()
    page.click("#toggle-settings")
    assert page.is_checked("#mcp-list input[value='local']")
    page.click("#toggle-settings")

    # The next answer: the earlier call and its output are in what the model received.
    settings(page, tool_choice="none")
    send(page, "Say it again.")
    wait_for_answers(page)
    follow = stored(webui_server, ident)["messages"][-1]
    assert NONCE in records.of(follow["meta"]["request_id"], "input")["prompt"]
