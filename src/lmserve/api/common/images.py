"""Images in requests: read, checked and decoded before a vision model gets them.

Every surface turns its images into OpenAI ``image_url`` parts of a chat request
(:class:`lmserve.api.common.protocol.ImageContentPart`); :func:`read_images` checks that the
model sees, reads each part's URL (a ``data:`` URL, or http(s) where the server allows it),
and decodes the bytes with Pillow into the RGB pixels the engine's projector takes.  Pillow
reads the header first, so an image over the pixel cap is refused before its pixels are
decompressed.  Nothing here hands bytes to a program: libmtmd's own reader would give bytes it
does not recognise to ffmpeg.

Each problem is a 400 in the surface's own error shape (an :class:`InvalidRequestError`, which
every surface maps), naming the message and part it concerns.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import re
import warnings
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.protocol import ChatCompletionRequest, ImageContentPart
from lmserve.config import ImageLimits
from lmserve.engine.types import MEDIA_MARKER, ImageInput, PromptImage
from lmserve.models.loader import LoadedModel

# What Pillow may decode: the formats the issue promises, nothing it merely could open.
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}
_MAX_REDIRECTS = 3


def image_parts(body: ChatCompletionRequest) -> Iterator[tuple[str, ImageContentPart]]:
    """Each image part of the conversation, with the parameter that names it."""
    for index, message in enumerate(body.messages):
        if isinstance(message.content, list):
            for position, part in enumerate(message.content):
                if isinstance(part, ImageContentPart):
                    yield f"messages[{index}].content[{position}]", part


# Each image's own marker while a prompt is rendered, so that the images are found in the
# order the template put them (it may reorder or drop messages); then the engine's marker.
_MARKER_STEM = MEDIA_MARKER[: -len("__>")]
_NUMBERED_MARKER = re.compile(re.escape(_MARKER_STEM) + r"#(\d+)__>")


def image_marker(index: int) -> str:
    """The marker of the ``index``-th image of a conversation in the text a template renders."""
    return f"{_MARKER_STEM}#{index}__>"


def place_images(prompt: str, images: list[ImageInput]) -> tuple[str, list[ImageInput]]:
    """The rendered ``prompt`` with the engine's marker where each image goes, and the
    images in that order."""
    ordered: list[ImageInput] = []

    def place(match: re.Match[str]) -> str:
        ordered.append(images[int(match.group(1))])
        return MEDIA_MARKER

    return _NUMBERED_MARKER.sub(place, prompt), ordered


def shown_prompt(prompt: str, images: tuple[PromptImage, ...]) -> str:
    """The prompt as the log stream and the chat page show it: each image as
    ``<image 3f2a… 16 tokens>`` (its hash and its tokens), not as the secret marker."""
    pieces = prompt.split(MEDIA_MARKER)
    shown = [pieces[0]]
    for image, piece in zip(images, pieces[1:], strict=False):
        shown.append(f"<image {image.image.id[:4]}… {image.n_tokens} tokens>{piece}")
    return "".join(shown)


def no_vision_error(model: LoadedModel, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Model '{model.identifier}' does not support images. Please use a model that does: "
        "a vision model, whose projector (mmproj-*.gguf) is in the model's folder or is "
        "named with --mmproj PATH on 'lmserve load' or 'lmserve serve'.",
        param=param,
        code="model_not_vision",
    )


def _error(message: str, param: str, code: str = "invalid_image") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count} bytes"


class ImageReader:
    """Reads the images of requests within the server's :class:`ImageLimits`."""

    def __init__(self, limits: ImageLimits) -> None:
        self.limits = limits

    async def read(self, body: ChatCompletionRequest, model: LoadedModel) -> None:
        """Read and decode every image of ``body`` for ``model``: each part's ``decoded``
        is set (an :class:`InvalidRequestError` for the first one that cannot be)."""
        parts = list(image_parts(body))
        if not parts:
            return
        if not model.vocab.vision:
            raise no_vision_error(model, parts[0][0])
        limits = self.limits
        if len(parts) > limits.max_images:
            raise _error(
                f"The request holds {len(parts)} images; this server takes at most "
                f"{limits.max_images} in one request (--max-images).",
                "messages",
                "too_many_images",
            )
        for param, part in parts:
            if part.decoded is None:
                data = await self._bytes(part.url, f"{param}.image_url")
                part.decoded = await asyncio.to_thread(self.decode, data, param)

    async def _bytes(self, url: str, param: str) -> bytes:
        scheme = urlsplit(url[:16]).scheme.lower() if ":" in url[:16] else ""
        if scheme == "data":
            return self._data_url(url, param)
        if scheme in ("http", "https"):
            if not self.limits.allow_urls:
                raise _error(
                    "Image URLs are not fetched by this server. Send the image in the "
                    "request as a data: URL (data:image/png;base64,...), or start the server "
                    "with --allow-image-urls.",
                    param,
                    "image_url_not_allowed",
                )
            return await self._fetch(url, param)
        if scheme == "file":
            raise _error("file: URLs are never read. Send the image as a data: URL.", param)
        raise _error(
            "An image URL must be a data: URL (data:image/png;base64,...)"
            + (" or an http(s) URL." if self.limits.allow_urls else "."),
            param,
        )

    def _data_url(self, url: str, param: str) -> bytes:
        header, comma, payload = url.partition(",")
        if not comma:
            raise _error("The image's data: URL has no comma before its data.", param)
        fields = header[len("data:") :].split(";")
        media_type = fields[0].strip().lower()
        if "base64" not in (field.strip().lower() for field in fields[1:]):
            raise _error("The image's data: URL must be base64 (data:image/png;base64,...).", param)
        if media_type and not media_type.startswith("image/"):
            raise _error(f"The data: URL holds {media_type}, not an image.", param)
        if len(payload) * 3 // 4 > self.limits.max_bytes + 3:
            raise self._too_large(len(payload) * 3 // 4, param)
        try:
            return base64.b64decode(payload.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise _error("The image's data: URL is not valid base64.", param) from None

    async def _fetch(self, url: str, param: str) -> bytes:
        limits = self.limits
        async with httpx.AsyncClient(timeout=limits.url_timeout, follow_redirects=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                try:
                    async with client.stream("GET", url, headers={"Accept": "image/*"}) as reply:
                        if reply.is_redirect and "location" in reply.headers:
                            url = urljoin(url, reply.headers["location"])
                            if urlsplit(url).scheme.lower() not in ("http", "https"):
                                raise _error("The image URL redirects away from http(s).", param)
                            continue
                        if reply.status_code != 200:
                            raise _error(
                                f"Fetching the image URL answered HTTP {reply.status_code}.",
                                param,
                                "invalid_image_url",
                            )
                        kind = reply.headers.get("content-type", "").split(";")[0].strip()
                        if not kind.lower().startswith("image/"):
                            raise _error(
                                f"The image URL serves {kind or 'no content type'}, not an image.",
                                param,
                                "invalid_image_url",
                            )
                        data = bytearray()
                        async for piece in reply.aiter_bytes():
                            data += piece
                            if len(data) > limits.max_bytes:
                                raise self._too_large(len(data), param, at_least=True)
                        return bytes(data)
                except httpx.HTTPError as exc:
                    raise _error(
                        f"The image URL could not be fetched: {type(exc).__name__}.",
                        param,
                        "invalid_image_url",
                    ) from None
        raise _error("The image URL redirects too many times.", param, "invalid_image_url")

    def _too_large(self, size: int, param: str, *, at_least: bool = False) -> InvalidRequestError:
        return _error(
            f"The image is {'over ' if at_least else ''}{_size(size)}; this server takes "
            f"images of up to {_size(self.limits.max_bytes)} (--max-image-size).",
            param,
            "image_too_large",
        )

    def decode(self, data: bytes, param: str) -> ImageInput:
        """The image's RGB pixels (a GIF's first frame), named by the hash of ``data``."""
        limits = self.limits
        if len(data) > limits.max_bytes:
            raise self._too_large(len(data), param)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                if image.format not in FORMATS:
                    raise _error(
                        f"The image is {image.format or 'of an unknown format'}; send PNG, "
                        "JPEG, WebP, GIF or BMP.",
                        param,
                    )
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise _error(
                        f"The image is {width}x{height} pixels; this server takes images of "
                        f"up to {limits.max_pixels:,} pixels (--max-image-pixels).",
                        param,
                        "image_too_large",
                    )
                image.seek(0)  # an animation's first frame
                rgb = image.convert("RGB")
        except InvalidRequestError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _error(
                "The image would decompress to too many pixels; this server takes images of "
                f"up to {limits.max_pixels:,} pixels (--max-image-pixels).",
                param,
                "image_too_large",
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError):
            # Pillow's words for bytes that are no image, or a truncated or corrupt one.
            raise _error(
                "The image could not be decoded: it is not a PNG, JPEG, WebP, GIF or BMP "
                "image, or it is truncated or corrupt.",
                param,
            ) from None
        return ImageInput(
            id=hashlib.sha256(data).hexdigest(),
            width=rgb.width,
            height=rgb.height,
            rgb=rgb.tobytes(),
        )
