#!/usr/bin/env python3
"""Take the README's screenshots of the chat page: light, dark, and a phone's width.

Drives Debian's Chromium (``/usr/bin/chromium``) with Playwright, as the browser tests do,
against a running lmserve: it asks the model one real question through the page, then
photographs the answer with its rendered prompt open (light), the settings beside it (dark),
and the same conversation 390 pixels wide. Usage::

    lmserve serve --port 1234 &
    python scripts/webui_screenshots.py --url http://127.0.0.1:1234 --out docs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's root
from tests.chromium import launch_chromium

QUESTION = "Write a Python function that returns the square of a number, with a short note."


def ready(page: Any, path: str = "/") -> None:
    page.goto(path)
    page.wait_for_selector("html[data-ready]")


def theme(page: Any, name: str) -> None:
    while page.evaluate("document.documentElement.dataset.theme || 'auto'") != name:
        page.click("#theme")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:1234")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        desk = browser.new_context(base_url=args.url, viewport={"width": 1280, "height": 800})
        page = desk.new_page()
        ready(page)
        page.click("#toggle-settings")
        page.fill("#max_tokens", "120")
        page.fill("#temperature", "0.2")
        page.click("#toggle-settings")
        page.fill("#input", QUESTION)
        page.press("#input", "Enter")
        page.wait_for_function(
            "() => Number(document.documentElement.dataset.answers || 0) >= 1", timeout=300_000
        )
        conversation = page.evaluate("location.hash")
        page.locator(".message.assistant details.prompt summary").click()
        theme(page, "light")
        page.screenshot(path=args.out / "webui-light.png")
        page.locator(".message.assistant details.prompt summary").click()
        theme(page, "dark")
        page.click("#toggle-settings")
        page.screenshot(path=args.out / "webui-dark.png")
        phone = browser.new_context(
            base_url=args.url, viewport={"width": 390, "height": 844}, device_scale_factor=2
        )
        small = phone.new_page()
        ready(small, f"/{conversation}")
        theme(small, "light")
        small.wait_for_selector(".message.assistant")
        small.screenshot(path=args.out / "webui-phone.png")
        browser.close()
    for name in ("webui-light.png", "webui-dark.png", "webui-phone.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
