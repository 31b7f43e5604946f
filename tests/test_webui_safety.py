"""The chat page against hostile model output, in a real browser: HTML a model writes (stored,
or streamed from the real model) shows as text and runs nothing; the page's own code breaks
no rule of its Content-Security-Policy; and it works at a phone's width, in both themes."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import Server
from tests.vision_assets import data_url, image_bytes
from tests.webui_browser import (  # noqa: F401 (the *_fixture names are fixtures)
    LogRecords,
    assert_clean,
    browser_fixture,
    current_id,
    new_page,
    open_page,
    page_fixture,
    records_fixture,
    seed_conversation,
    send,
    settings,
    stored,
    wait_for_answers,
    webui_server_fixture,
)

HOSTILE = (
    "<img src=x onerror=\"window.__xss='img'\"> <script>window.__xss='script'</script> "
    "[click me](javascript:window.__xss='link') <a href=\"javascript:window.__xss='a'\">a</a> "
    "<iframe src=\"javascript:window.__xss='frame'\"></iframe> <javascript:window.__xss='auto'> "
    "![pixel](https://example.invalid/beacon.png?secret=1)"
)


def assert_shown_as_text(page: Any, scope: str) -> None:
    text = page.locator(scope).inner_text()
    assert "<img src=x onerror=" in text and "<script>" in text and "javascript:" in text
    for selector in ("img", "script", "iframe", "a[href^='javascript']", "[onerror]"):
        assert page.locator(f"#messages {selector}").count() == 0, selector


def test_stored_hostile_html_is_shown_as_text(page: Any, webui_server: Server) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "x", "arguments": HOSTILE}}
    title = "<img src=x onerror=\"window.__xss='title'\">"
    ident = seed_conversation(
        webui_server, title, HOSTILE, reasoning_content=HOSTILE, tool_calls=[call]
    )
    open_page(page, f"/#{ident}")
    page.wait_for_selector(".message.assistant")
    assert not page.locator(".message.assistant .reasoning .md").is_visible()  # folded
    page.locator(".message.assistant details.reasoning summary").click()
    assert_shown_as_text(page, ".message.assistant .content")
    assert_shown_as_text(page, ".message.assistant .reasoning")
    assert_shown_as_text(page, ".message.assistant .tool-call")
    page.get_by_text("click me", exact=False).first.click()  # not a link: nothing happens
    assert page.url.endswith(f"#{ident}")
    assert page.locator("#chat-title").inner_text() == title  # the title too


def test_only_the_users_own_images_show_as_images(page: Any, webui_server: Server) -> None:
    """An image the user attached shows; one the model writes stays text, even as a data:
    URL (which the policy would allow): markdown renders no image, HTML is escaped."""
    url = data_url(image_bytes("PNG", seed=3))
    base = f"{webui_server.base_url}/lmserve/conversations"
    ident = httpx.post(base, json={"title": "Images"}).json()["id"]
    question = httpx.post(
        f"{base}/{ident}/messages",
        json={"role": "user", "content": "Look", "images": [{"url": url}]},
    ).json()
    answer = f'![leak]({url}) <img src="{url}" onload="window.__xss=1">'
    httpx.post(
        f"{base}/{ident}/messages",
        json={"role": "assistant", "content": answer, "parent_id": question["id"]},
    ).raise_for_status()
    open_page(page, f"/#{ident}")
    page.wait_for_function(
        "() => document.querySelector('.message.user .attached img')?.naturalWidth === 64"
    )
    assert page.locator("#messages img").count() == 1
    assert '<img src="data:image/png' in page.locator(".message.assistant .content").inner_text()


def test_a_streamed_answer_with_html_runs_nothing(
    page: Any, webui_server: Server, records: LogRecords
) -> None:
    """A real answer from the model, streamed token by token, that holds the payload: the
    structured-output setting's JSON schema makes ``const`` the only thing it may write
    (sampled under a grammar), so the model says it every time."""
    payload = (
        "<img src=x onerror=window.__xss=1> <script>window.__xss=2</script> "
        "[click](javascript:window.__xss=3)"
    )
    schema = {
        "type": "object",
        "properties": {"html": {"const": payload}},
        "required": ["html"],
        "additionalProperties": False,
    }
    open_page(page)
    settings(page, response_format=json.dumps(schema))
    send(page, "Write some HTML.")
    answer = wait_for_answers(page)
    message = stored(webui_server, current_id(page))["messages"][-1]
    assert payload in records.of(message["meta"]["request_id"], "output")["output"]
    assert payload in answer.locator(".content").inner_text()
    assert_shown_as_text(page, ".message.assistant .content")


def test_no_policy_violation_from_the_page_and_the_watch_works(
    page: Any, webui_server: Server
) -> None:
    markdown = (
        "# Title\n\n| left | middle | right |\n|:--|:-:|--:|\n| a | b | c |\n\n"
        "```python\ndef add(a, b):\n    return a + b\n```\n\n> quote, `code`, [a link](https://example.org)"
    )
    ident = seed_conversation(webui_server, "Markdown", markdown)
    open_page(page, f"/#{ident}")
    page.wait_for_selector(".message.assistant .code-bar")
    assert page.locator(".md .hljs-keyword").first.inner_text() == "def"  # highlighted
    assert page.locator(".md td.align-right").count() == 1  # alignment without style=""
    link = page.locator(".md a")
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    for button in ("#toggle-settings", "#toggle-logs", "#theme", "#theme", "#toggle-logs"):
        page.click(button)
    page.click("#chat-title")
    page.keyboard.press("Escape")
    assert page.evaluate("window.__violations") == []
    # The watch itself: a string into innerHTML (Trusted Types) and an image from elsewhere
    # are refused and reported.
    refused = page.evaluate(
        """() => { try { document.body.innerHTML = '<b>x</b>'; return false; }
                   catch (error) { return error instanceof TypeError; } }"""
    )
    page.evaluate(
        "() => { const i = new Image(); i.src = 'https://example.invalid/p.png'; "
        "document.body.append(i); }"
    )
    page.wait_for_function("() => window.__violations.length >= 2")
    directives = {v["directive"] for v in page.evaluate("window.__violations")}
    assert refused and {"require-trusted-types-for", "img-src"} <= directives
    page.evaluate("window.__violations = []")


def test_a_phone_width_and_both_themes(browser: Any, webui_server: Server) -> None:
    page = new_page(browser, webui_server, viewport={"width": 390, "height": 844}, has_touch=True)
    try:
        open_page(page)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 390  # no sideways
        assert page.locator("#sidebar").bounding_box()["x"] < 0  # tucked away
        page.click("#open-sidebar")
        page.wait_for_function(
            "() => document.querySelector('#sidebar').getBoundingClientRect().x >= 0"
        )
        page.click("#close-sidebar")
        composer = page.locator("#input").bounding_box()
        assert composer["width"] > 250 and composer["y"] + composer["height"] <= 844
        # Keys: / focuses the message box, Alt+S opens the settings, Esc closes them.
        page.keyboard.press("/")
        assert page.evaluate("document.activeElement.id") == "input"
        page.keyboard.press("Alt+s")
        assert page.locator("#settings").is_visible()
        assert page.locator("#settings").bounding_box()["width"] == 390  # the whole screen
        page.keyboard.press("Escape")
        assert not page.locator("#settings").is_visible()
        backgrounds = []
        for theme in ("light", "dark"):
            page.click("#theme")
            assert page.evaluate("document.documentElement.dataset.theme") == theme
            backgrounds.append(page.evaluate("getComputedStyle(document.body).backgroundColor"))
        assert backgrounds == ["rgb(255, 255, 255)", "rgb(21, 23, 28)"]
        page.reload()
        page.wait_for_selector("html[data-ready]")
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"  # remembered
        assert_clean(page)
    finally:
        page.context.close()
