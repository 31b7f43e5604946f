"""Images in: a vision model (the default model with a tiny generated projector) through
OpenAI's chat completions, the engine's caches, the caps and the bad input.

The projector's weights are random, so its answers are nonsense: the tests check structure
(token counts, caches, equal and different answers), never content.
"""

from __future__ import annotations

import base64
import http.server
import io
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import Server, running_server
from tests.helpers import prompts
from tests.vision_assets import IMAGE_TOKENS, data_url, image_bytes, write_projector

MODEL = "smollm2-135m-instruct"
QUESTION = {"type": "text", "text": "What is in this picture?"}
# Small caps, so that the tests of them send little.
CAPS = ("--max-image-size", "1M", "--max-image-pixels", "1000000", "--max-images", "3")


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_projector(tmp_path_factory.mktemp("projector") / "mmproj-tiny.gguf", 576)


@pytest.fixture(scope="module")
def vision(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path, projector: Path
) -> Iterator[Server]:
    # No drafts: whether to draft depends on timings, and a drafted step's arithmetic differs
    # in the last bits from one token at a time.
    flags = ("--parallel", "4", "--speculative", "off", "--mmproj", str(projector), *CAPS)
    with running_server(tmp_path_factory, default_model_file, *flags) as server:
        yield server


def image_part(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data, media_type)}}


def chat(server: Server, content: list[dict[str, Any]], **fields: Any) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 8,
        **fields,
    }
    return httpx.post(f"{server.api_url}/chat/completions", json=body, timeout=120)


def answer(server: Server, content: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    response = chat(server, content, **fields)
    assert response.status_code == 200, response.text
    return response.json()


def text(reply: dict[str, Any]) -> str:
    return str(reply["choices"][0]["message"]["content"])


def first_logprobs(reply: dict[str, Any]) -> dict[str, float]:
    top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return {entry["token"]: entry["logprob"] for entry in top}


def test_openai_sdk_sends_an_image_and_counts_its_tokens(vision: Server) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=vision.api_url, api_key="any", max_retries=0)
    url = data_url(image_bytes("PNG", seed=1))
    with prompts(vision) as seen:
        with_image = client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                    ],
                }
            ],
            temperature=0,
            max_tokens=8,
        )
    without = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is in this picture?"}],
        temperature=0,
        max_tokens=8,
    )
    assert with_image.usage is not None and without.usage is not None
    # The image's tokens, and the text llama.cpp wraps them in, count as prompt tokens.
    assert with_image.usage.prompt_tokens >= without.usage.prompt_tokens + IMAGE_TOKENS
    # What the model received shows the image as its hash and tokens, never the marker.
    shown = seen[0]
    assert re.search(rf"<image [0-9a-f]{{4}}… {IMAGE_TOKENS} tokens>", shown), shown
    assert "__media" not in shown


def test_the_same_image_answers_the_same_and_another_differs(vision: Server) -> None:
    first = answer(
        vision, [QUESTION, image_part(image_bytes(seed=1))], logprobs=True, top_logprobs=5
    )
    again = answer(
        vision, [QUESTION, image_part(image_bytes(seed=1))], logprobs=True, top_logprobs=5
    )
    other = answer(
        vision, [QUESTION, image_part(image_bytes(seed=2))], logprobs=True, top_logprobs=5
    )
    assert text(first) == text(again)
    assert first_logprobs(first) == pytest.approx(first_logprobs(again))
    assert first_logprobs(first) != first_logprobs(other)
    # The same image sent again is read from the slot that holds it.
    assert (
        again["usage"]["prompt_tokens_details"]["cached_tokens"]
        == first["usage"]["prompt_tokens"] - 1
    )


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif"), ("BMP", "image/bmp")],
)
def test_every_common_format_is_read(vision: Server, fmt: str, media_type: str) -> None:
    reply = answer(vision, [QUESTION, image_part(image_bytes(fmt, seed=3), media_type)])
    assert reply["usage"]["prompt_tokens"] > IMAGE_TOKENS


def test_a_gif_is_read_as_its_first_frame(vision: Server) -> None:
    frames = [
        Image.frombytes("RGB", (64, 64), bytes([value]) * (64 * 64 * 3)) for value in (40, 200)
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    still = io.BytesIO()
    frames[0].save(still, "PNG")
    animated = answer(
        vision,
        [QUESTION, image_part(buffer.getvalue(), "image/gif")],
        logprobs=True,
        top_logprobs=3,
    )
    first = answer(vision, [QUESTION, image_part(still.getvalue())], logprobs=True, top_logprobs=3)
    assert first_logprobs(animated) == pytest.approx(first_logprobs(first))


def test_the_next_turn_reuses_the_image_it_follows(vision: Server) -> None:
    opening = [QUESTION, image_part(image_bytes(seed=4))]
    turn1 = answer(vision, opening)
    messages = [
        {"role": "user", "content": opening},
        {"role": "assistant", "content": text(turn1)},
        {"role": "user", "content": "Tell me more."},
    ]
    response = httpx.post(
        f"{vision.api_url}/chat/completions",
        json={"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 8},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    cached = response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    # Everything up to the answer's end came from the cache, the image included.
    assert cached >= turn1["usage"]["prompt_tokens"]


def test_requests_with_and_without_images_run_together(vision: Server) -> None:
    plain = [[{"type": "text", "text": f"Count to {n}."}] for n in (3, 5)]
    alone = [text(answer(vision, content)) for content in plain]
    work = [
        *plain,
        [QUESTION, image_part(image_bytes(seed=5))],
        [QUESTION, image_part(image_bytes(seed=6))],
    ]
    with ThreadPoolExecutor(len(work)) as pool:
        replies = list(pool.map(lambda content: answer(vision, content, max_tokens=16), work))
    assert [
        text(reply)[: len(solo)] for reply, solo in zip(replies[:2], alone, strict=True)
    ] == alone
    assert all(reply["usage"]["prompt_tokens"] > IMAGE_TOKENS for reply in replies[2:])


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


BAD_IMAGES = {
    "bad base64": ("data:image/png;base64,!!!notbase64", "invalid_image", "not valid base64"),
    "not an image": (
        "data:image/png;base64," + base64.b64encode(b"#!/bin/sh\necho hi\n" * 8).decode(),
        "invalid_image",
        "could not be decoded",
    ),
    "truncated": (data_url(image_bytes("PNG", seed=7)[:600]), "invalid_image", "truncated"),
    "over the size cap": (
        data_url(image_bytes("PNG", size=(700, 700))),
        "image_too_large",
        "1.0 MiB",
    ),
    "over the pixel cap": (data_url(_png((1200, 1000))), "image_too_large", "1,000,000 pixels"),
    "a decompression bomb": (data_url(_png((20000, 20000), "1")), "image_too_large", "pixels"),
    "a remote URL": ("http://127.0.0.1:9/cat.png", "image_url_not_allowed", "--allow-image-urls"),
    "a file URL": ("file:///etc/passwd", "invalid_image", "never read"),
    "not a media type": ("data:text/plain;base64,aGk=", "invalid_image", "not an image"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_get_a_clear_400_and_the_server_goes_on(vision: Server, case: str) -> None:
    url, code, words = BAD_IMAGES[case]
    response = chat(vision, [QUESTION, {"type": "image_url", "image_url": {"url": url}}])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert words in error["message"]
    assert error["param"].startswith("messages[0].content[1]")
    assert answer(vision, [QUESTION])["choices"]


def test_too_many_images_say_the_cap(vision: Server) -> None:
    parts = [image_part(image_bytes(seed=seed)) for seed in range(4)]
    response = chat(vision, [QUESTION, *parts])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_many_images"
    assert "at most 3" in error["message"]


def test_hostile_shapes_never_crash_the_worker(vision: Server) -> None:
    strip = answer(vision, [QUESTION, image_part(_png((1, 100000)))])
    tiny = answer(vision, [QUESTION, image_part(_png((1, 1)))])
    assert strip["usage"]["prompt_tokens"] == tiny["usage"]["prompt_tokens"]
    metrics = httpx.get(f"{vision.base_url}/metrics").text
    assert re.search(rf'lmserve_images_total{{model="{MODEL}"}} \d+', metrics), metrics
    assert f'lmserve_image_tokens_total{{model="{MODEL}"}}' in metrics


class _Images(http.server.BaseHTTPRequestHandler):
    """A loopback web server for image URLs: one image, and the ways a URL goes wrong."""

    png = image_bytes("PNG", seed=8)

    def do_GET(self) -> None:
        routes = {
            "/cat.png": (200, "image/png", self.png),
            "/page": (200, "text/html", b"<html></html>"),
            "/huge.png": (200, "image/png", image_bytes("PNG", size=(700, 700))),
            "/missing.png": (404, "text/plain", b"no"),
        }
        if self.path in ("/to-cat", "/to-file"):
            self.send_response(302)
            self.send_header(
                "Location", "/cat.png" if self.path == "/to-cat" else "file:///etc/passwd"
            )
            self.end_headers()
            return
        status, kind, body = routes[self.path]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def one_slot(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path, projector: Path
) -> Iterator[Server]:
    """A vision server with one slot, that fetches image URLs."""
    flags = ("--parallel", "1", "--speculative", "off", "--mmproj", str(projector))
    with running_server(
        tmp_path_factory, default_model_file, *flags, "--allow-image-urls", *CAPS
    ) as server:
        yield server


def test_image_urls_are_fetched_when_allowed(one_slot: Server) -> None:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{web.server_address[1]}"
    try:

        def send(path: str) -> httpx.Response:
            return chat(
                one_slot, [QUESTION, {"type": "image_url", "image_url": {"url": base + path}}]
            )

        fetched = send("/cat.png")
        assert fetched.status_code == 200, fetched.text
        inline = answer(one_slot, [QUESTION, image_part(_Images.png)])
        assert fetched.json()["choices"][0]["message"] == inline["choices"][0]["message"]
        assert send("/to-cat").status_code == 200
        for path, words in [
            ("/page", "text/html, not an image"),
            ("/huge.png", "over 1.0 MiB"),
            ("/missing.png", "HTTP 404"),
            ("/to-file", "away from http(s)"),
        ]:
            refused = send(path)
            assert refused.status_code == 400, (path, refused.text)
            assert words in refused.json()["error"]["message"], path
    finally:
        web.shutdown()


def test_an_image_comes_back_from_the_prompt_cache(one_slot: Server) -> None:
    def native(messages: list[dict[str, Any]]) -> dict[str, Any]:
        response = httpx.post(
            f"{one_slot.base_url}/api/v0/chat/completions",
            json={"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 8},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return response.json()

    opening = [QUESTION, image_part(image_bytes(seed=12))]
    first = native([{"role": "user", "content": opening}])
    # The one slot goes to another conversation; the picture's is kept in memory.
    native([{"role": "user", "content": "Something else entirely: tell me about cats."}])
    later = native(
        [
            {"role": "user", "content": opening},
            {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
            {"role": "user", "content": "Tell me more."},
        ]
    )
    restored = later["stats"]["cached_tokens_from"]["memory"]
    assert restored >= first["usage"]["prompt_tokens"], later["stats"]
