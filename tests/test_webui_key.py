"""The chat page with an API key set: it asks for the key once, keeps it for the tab, and
sends it with every call, the log stream's included. (A module of its own, so that its
server never runs beside the other browser tests' one.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_server
from tests.webui_browser import (  # noqa: F401 (browser_fixture: the fixture 'browser')
    assert_clean,
    browser_fixture,
    new_page,
    send,
    settings,
    wait_for_answers,
)

KEY = "sk-webui-browser-77c1"


def test_the_page_works_with_an_api_key(
    browser: Any, tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> None:
    with running_server(tmp_path_factory, default_model_file, "--api-key", KEY) as server:
        page = new_page(browser, server)
        calls: list[tuple[str, str | None]] = []
        page.on(
            "request",
            lambda r: (
                calls.append((r.url, r.headers.get("authorization")))
                if "/webui/" not in r.url and not r.url.endswith("/")
                else None
            ),
        )
        try:
            page.goto("/")
            page.wait_for_selector("#key-dialog[open]")
            page.fill("#key-input", "wrong-key")
            page.press("#key-input", "Enter")
            page.wait_for_function(
                "() => document.querySelector('#key-message').textContent.includes('refused')"
            )
            page.fill("#key-input", KEY)
            page.press("#key-input", "Enter")
            page.wait_for_selector("html[data-ready]")
            assert not page.locator("#key-dialog").is_visible()
            assert page.evaluate("sessionStorage.getItem('lmserve.apiKey')") == KEY
            settings(page, max_tokens=3)
            send(page, "Hi")
            answer = wait_for_answers(page)
            answer.locator("details.prompt summary").click()  # the log stream was read
            assert answer.locator(".prompt-text").inner_text().endswith("<|im_start|>assistant\n")
            used = [auth for url, auth in calls if url.startswith(server.base_url)]
            assert f"Bearer {KEY}" in used and set(used) <= {
                None,
                "Bearer wrong-key",
                f"Bearer {KEY}",
            }
            page.reload()  # asked once: the tab keeps the key
            page.wait_for_selector("html[data-ready]")
            assert not page.locator("#key-dialog").is_visible()
            page.evaluate("window.__violations = window.__violations || []")
            assert_clean(page)
        finally:
            page.context.close()
