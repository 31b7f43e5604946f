"""Images on the chat page, in a real browser against the real server: the default model with
a tiny vision projector (``tests/vision_assets.py``), Gemma 3 beside it without one. An image
attached, pasted or dropped shows in the composer and in the conversation, goes to the model
(the rendered prompt shows it by its hash and tokens), is stored with the conversation and
shown again after a reload; a model that does not see refuses, and the page says so."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmserve.models.default import GEMMA3_270M
from tests.conftest import GEMMA_ID, Server, install_default_model, install_model, start_server
from tests.vision_assets import IMAGE_TOKENS, data_url, image_bytes, write_projector
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

PNG = image_bytes("PNG", seed=1)
JPEG = image_bytes("JPEG", seed=2)


@pytest.fixture(scope="module", name="webui_server")
def vision_server_fixture(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path, gemma_model_file: Path
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    install_default_model(home, default_model_file)
    install_model(home, gemma_model_file, GEMMA3_270M)
    projector = write_projector(home / "projectors" / "mmproj-tiny.gguf", n_embd=576)
    server = start_server(home, "--mmproj", str(projector), "--parallel", "2")
    try:
        yield server
    finally:
        server.stop()


def thumbnails(page: Any, scope: str, count: int) -> list[str]:
    """The ``src`` of the images under ``scope``, once ``count`` of them show (loaded)."""
    page.wait_for_function(
        f"""() => {{
            const images = [...document.querySelectorAll('{scope} img')];
            return images.length === {count} && images.every((i) => i.complete && i.naturalWidth);
        }}"""
    )
    return page.eval_on_selector_all(f"{scope} img", "images => images.map((i) => i.src)")


def test_an_attached_image_goes_to_the_model_and_stays_with_the_conversation(
    page: Any, webui_server: Server, records: LogRecords
) -> None:
    open_page(page)
    settings(page, max_tokens=8, temperature=0)
    page.set_input_files(
        "#attach-file", files=[{"name": "one.png", "mimeType": "image/png", "buffer": PNG}]
    )
    assert thumbnails(page, "#attachments", 1) == [data_url(PNG)]
    send(page, "What is in this picture?")
    answer = wait_for_answers(page)
    assert page.locator("#attachments img").count() == 0  # sent: the composer is empty again
    assert thumbnails(page, ".message.user .attached", 1) == [data_url(PNG)]

    # Stored with the conversation, by the hash the prompt shows.
    sha = hashlib.sha256(PNG).hexdigest()
    question, reply = stored(webui_server, current_id(page))["messages"]
    assert question["images"] == [{"id": sha, "media_type": "image/png", "size": len(PNG)}]
    assert reply["content"] == records.of(reply["meta"]["request_id"], "output")["output"] != ""
    # The model got the image, then the text; "what the model received" shows it so.
    placeholder = f"<image {sha[:4]}… {IMAGE_TOKENS} tokens>"
    prompt = records.of(reply["meta"]["request_id"], "input")["prompt"]
    assert prompt.index(placeholder) < prompt.index("What is in this picture?")
    received = answer.locator("details.prompt")
    assert f"1 image ({IMAGE_TOKENS} tokens)" in received.locator("summary").inner_text()
    received.locator("summary").click()
    assert placeholder in received.locator(".prompt-text").inner_text()

    # A reload opens the conversation again, its image fetched from the store.
    page.reload()
    page.wait_for_selector("html[data-ready]")
    assert thumbnails(page, ".message.user .attached", 1) == [data_url(PNG)]
    assert placeholder in page.locator(".message.assistant .prompt-text").text_content()


def test_pasted_and_dropped_images_attach_and_others_are_refused(page: Any) -> None:
    open_page(page)
    page.evaluate(
        """(b64) => {
            const transfer = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], 'pasted.png', { type: 'image/png' }));
            document.querySelector('#input').dispatchEvent(new ClipboardEvent('paste',
                { clipboardData: transfer, bubbles: true, cancelable: true }));
        }""",
        base64.b64encode(PNG).decode(),
    )
    assert thumbnails(page, "#attachments", 1) == [data_url(PNG)]
    # A drop on the composer, through Playwright's own dispatch with a DataTransfer: an image
    # and a text file, which is refused.
    transfer = page.evaluate_handle(
        """(b64) => {
            const transfer = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], 'dropped.jpg', { type: 'image/jpeg' }));
            transfer.items.add(new File(['hello'], 'notes.txt', { type: 'text/plain' }));
            return transfer;
        }""",
        base64.b64encode(JPEG).decode(),
    )
    page.dispatch_event("#input", "drop", {"dataTransfer": transfer})
    assert thumbnails(page, "#attachments", 2) == [data_url(PNG), data_url(JPEG, "image/jpeg")]
    assert "Not attached: notes.txt" in page.inner_text("#status")
    page.click("#attachments button[aria-label='Remove pasted.png']")
    assert thumbnails(page, "#attachments", 1) == [data_url(JPEG, "image/jpeg")]


def test_a_model_that_does_not_see_refuses_and_the_page_says_so(page: Any) -> None:
    open_page(page)
    page.select_option("#model-select", GEMMA_ID)
    page.set_input_files(
        "#attach-file", files=[{"name": "one.png", "mimeType": "image/png", "buffer": PNG}]
    )
    assert "does not see images" in page.inner_text("#attachments")
    send(page, "What is in this picture?")
    failed = wait_for_answers(page)
    assert "error-message" in failed.get_attribute("class")
    assert "does not support images" in failed.inner_text()
    assert "does not support images" in page.inner_text("#status.error")
    # The question stays, with its image, to be sent again to a model that sees.
    assert thumbnails(page, ".message.user .attached", 1) == [data_url(PNG)]
