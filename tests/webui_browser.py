"""What the browser tests of the chat page share: Debian's Chromium driven by Playwright,
a watch for Content-Security-Policy violations, and a reader of the server's log records."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chromium import CHROMIUM, launch_chromium
from tests.conftest import Server, running_server

playwright_api = pytest.importorskip("playwright.sync_api")

# Runs in every document before the page's own scripts: records every CSP violation (the
# Trusted Types ones included), so a test can assert there was none.
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (event) => {
  window.__violations.push({directive: event.violatedDirective, blocked: event.blockedURI,
                            source: event.sourceFile, line: event.lineNumber,
                            sample: event.sample});
});
"""


def launch(playwright: Any) -> Any:
    """Chromium, or a skip (a failure where LMSERVE_REQUIRE_BROWSER is set, as in CI)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("LMSERVE_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    return launch_chromium(playwright)


class LogRecords:
    """The server's log records (GET /lmserve/log/stream), read on a thread of their own."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._follow, args=(base_url, headers or {}), daemon=True
        )

    def _follow(self, base_url: str, headers: dict[str, str]) -> None:
        url = f"{base_url}/lmserve/log/stream"
        with httpx.stream("GET", url, headers=headers, timeout=None) as response:
            for line in response.iter_lines():
                self._ready.set()
                if self._stop.is_set():
                    return
                if line.startswith("data: "):
                    self.records.append(json.loads(line[6:]))

    def start(self) -> LogRecords:
        self._thread.start()
        assert self._ready.wait(10), "the log stream did not answer"
        return self

    def stop(self) -> None:
        self._stop.set()

    def of(self, request_id: str, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        """The ``llm.prediction.<kind>`` record of a request, once it came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records:
                if record.get("request_id") == request_id and record["type"] == (
                    f"llm.prediction.{kind}"
                ):
                    return record
            time.sleep(0.05)
        raise AssertionError(f"no llm.prediction.{kind} record for {request_id}")


@contextmanager
def log_records(base_url: str, headers: dict[str, str] | None = None) -> Iterator[LogRecords]:
    records = LogRecords(base_url, headers).start()
    try:
        yield records
    finally:
        records.stop()


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    """One Chromium per test module (import ``browser_fixture`` to use it)."""
    with playwright_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


def new_page(browser: Any, server: Server, **context: Any) -> Any:
    ctx = browser.new_context(base_url=server.base_url, **context)
    ctx.add_init_script(WATCH_VIOLATIONS)
    page = ctx.new_page()
    page.errors = []  # uncaught exceptions of the page's own code
    page.on("pageerror", lambda error: page.errors.append(str(error)))

    def on_dialog(dialog: Any) -> None:  # alert(), confirm(): the page has none to show
        page.errors.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return page


def assert_clean(page: Any) -> None:
    """No CSP (or Trusted Types) violation, no uncaught error, no alert: nothing of ours
    broke the policy, and nothing the model wrote ran."""
    assert page.evaluate("window.__violations") == []
    assert page.errors == [], page.errors
    assert page.evaluate("window.__xss") is None


def open_page(page: Any, path: str = "/") -> None:
    page.goto(path)
    page.wait_for_selector("html[data-ready]")


def settings(page: Any, **values: Any) -> None:
    """Type settings into the panel (saved with the conversation as they are typed)."""
    page.click("#toggle-settings")
    if {"response_format", "tools", "tool_choice"} & values.keys():
        page.click("details.advanced summary")
    for name, value in values.items():
        if name == "stream":
            page.set_checked("#stream", value)
        else:
            page.fill(f"#{'stop_lines' if name == 'stop' else name}", str(value))
    page.wait_for_timeout(500)  # past the save's debounce
    assert page.inner_text("#settings-error") == ""
    page.click("#toggle-settings")


def send(page: Any, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_for_answers(page: Any, count: int = 1, timeout: float = 180_000) -> Any:
    """Wait until the page has finished ``count`` answers (its ``data-answers``); the last
    answer shown."""
    page.wait_for_function(
        f"() => Number(document.documentElement.dataset.answers || 0) >= {count}",
        timeout=timeout,
    )
    return page.locator(".message.assistant").last


@pytest.fixture(scope="module", name="webui_server")
def webui_server_fixture(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[Server]:
    """A server of the default model for one test module (two slots)."""
    with running_server(tmp_path_factory, default_model_file, "--parallel", "2") as server:
        yield server


@pytest.fixture(scope="module", name="records")
def records_fixture(webui_server: Server) -> Iterator[LogRecords]:
    """The log records of that server, from the module's start."""
    with log_records(webui_server.base_url) as log:
        yield log


@pytest.fixture(name="page")
def page_fixture(browser: Any, webui_server: Server) -> Iterator[Any]:
    """A fresh page (its own context) that must end clean (see ``assert_clean``)."""
    page = new_page(browser, webui_server, viewport={"width": 1280, "height": 860})
    yield page
    try:
        assert_clean(page)
    finally:
        page.context.close()


def stored(server: Server, ident: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/lmserve/conversations/{ident}", headers=headers)
    response.raise_for_status()
    return response.json()


def current_id(page: Any) -> str:
    return page.evaluate("decodeURIComponent(location.hash.slice(1))")


def seed_conversation(server: Server, title: str, answer: str, **extra: Any) -> str:
    """A conversation written through the API, as if an earlier answer had said ``answer``."""
    base = f"{server.base_url}/lmserve/conversations"
    ident = httpx.post(base, json={"title": title}).json()["id"]
    question = httpx.post(f"{base}/{ident}/messages", json={"role": "user", "content": "Hi"})
    httpx.post(
        f"{base}/{ident}/messages",
        json={"role": "assistant", "content": answer, "parent_id": question.json()["id"], **extra},
    ).raise_for_status()
    return ident
