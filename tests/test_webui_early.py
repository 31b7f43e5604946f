"""The chat page used before it has its data: a message sent (Enter) while the model list is
still on its way, with a model loaded and with none at all; a regenerate in a conversation
that names no model. The page never asks for an answer without a model (issue #30).

One server for the module, started with no model and none downloaded; each test puts the
models folder and the loaded set in the state it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL_ID, Server, install_default_model, start_server
from tests.webui_browser import (  # noqa: F401 (the *_fixture names are fixtures)
    assert_clean,
    browser_fixture,
    current_id,
    new_page,
    open_page,
    seed_conversation,
    stored,
    wait_for_answers,
)

MODELS = "/api/v1/models"


@pytest.fixture(scope="module", name="early_server")
def early_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("home"), "--no-model", "--parallel", "1")
    try:
        yield server
    finally:
        server.stop()


def with_model(server: Server, model_file: Path) -> None:
    """The default model downloaded and loaded."""
    install_default_model(server.home, model_file)
    answer = httpx.post(
        f"{server.base_url}/api/v1/models/load", json={"model": MODEL_ID}, timeout=120
    )
    answer.raise_for_status()


def without_models(server: Server) -> None:
    """No model loaded, none downloaded."""
    for model in httpx.get(f"{server.base_url}/api/v0/models").json()["data"]:
        if model["state"] == "loaded":
            unload = {"instance_id": model["id"]}
            httpx.post(f"{server.base_url}/api/v1/models/unload", json=unload).raise_for_status()
    for path in (server.home / "models").rglob("*.gguf"):
        path.unlink()


class Watched:
    """A page whose model list is held back until :meth:`release`, and what it sent: the
    bodies of its chat requests and its responses of status 400 or more."""

    def __init__(self, browser: Any, server: Server) -> None:
        self.page = new_page(browser, server, viewport={"width": 1280, "height": 860})
        # Short answers: the settings a new conversation starts from, as a browser keeps them.
        self.page.context.add_init_script(
            "try { localStorage.setItem('lmserve.settings', "
            "JSON.stringify({max_tokens: 8, temperature: 0})); } catch {}"
        )
        self.held: list[Any] = []
        self.released = False
        self.chats: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.page.route(f"**{MODELS}", self._hold)
        self.page.on("request", self._request)
        self.page.on("response", self._response)

    def _hold(self, route: Any) -> None:
        if self.released:
            route.continue_()
        else:
            self.held.append(route)

    def _request(self, request: Any) -> None:
        if request.url.endswith("/chat/completions"):
            self.chats.append(request.post_data_json)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.refused.append(f"{response.status} {response.request.method} {response.url}")

    def open_and_send_early(self, text: str) -> None:
        """Open the page, and as soon as its script asks for the model list (its keys are
        wired by then) type ``text`` and press Enter; the list comes 500 ms later."""
        self.page.goto("/", wait_until="commit")
        while not self.held:
            self.page.wait_for_timeout(5)
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")
        self.page.wait_for_timeout(500)
        self.release()

    def release(self) -> None:
        self.released = True
        for route in self.held:
            route.continue_()
        self.held.clear()

    def close(self) -> None:
        try:
            assert_clean(self.page)
        finally:
            self.page.context.close()


@pytest.fixture(name="watched")
def watched_fixture(browser: Any, early_server: Server) -> Iterator[Watched]:
    watched = Watched(browser, early_server)
    yield watched
    watched.close()


def test_a_message_sent_before_the_model_list_is_answered(
    watched: Watched, early_server: Server, default_model_file: Path
) -> None:
    with_model(early_server, default_model_file)
    watched.open_and_send_early("Say hello.")
    answer = wait_for_answers(watched.page, timeout=120_000)
    assert [body["model"] for body in watched.chats] == [MODEL_ID]
    assert watched.refused == []
    assert "error-message" not in (answer.get_attribute("class") or "")
    messages = stored(early_server, current_id(watched.page))["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Say hello." and messages[1]["content"]
    assert messages[1]["meta"]["model"] == MODEL_ID


def test_a_regenerate_in_a_conversation_that_names_no_model(
    watched: Watched, early_server: Server, default_model_file: Path
) -> None:
    with_model(early_server, default_model_file)
    ident = seed_conversation(early_server, "Seeded", "An earlier answer.")
    assert stored(early_server, ident)["settings"]["model"] is None
    watched.release()
    open_page(watched.page, f"/#{ident}")
    watched.page.locator(".message.assistant .regenerate").click()
    answer = wait_for_answers(watched.page, timeout=120_000)
    assert [body["model"] for body in watched.chats] == [MODEL_ID]
    assert watched.refused == []
    assert answer.locator(".branch-count").inner_text() == "2/2"


def test_with_no_model_the_page_says_what_to_do(watched: Watched, early_server: Server) -> None:
    without_models(early_server)
    watched.open_and_send_early("Anyone there?")
    answer = wait_for_answers(watched.page, timeout=30_000)
    assert watched.chats == []  # nothing was asked of a model
    assert watched.refused == []
    assert "error-message" in (answer.get_attribute("class") or "")
    said = answer.inner_text()
    assert "No model is loaded or downloaded" in said
    assert "lmserve get" in said and "models panel" in said
    assert watched.page.locator("#send").is_visible()  # the page is free again
    messages = stored(early_server, current_id(watched.page))["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "Anyone there?")]
