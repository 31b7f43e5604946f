"""The images a user attaches to a message: checked, and kept as bytes beside the messages.

The page sends each image as a ``data:`` URL (what it also sends the model); the store keeps
its bytes once per conversation in the ``images`` table, named by their SHA-256, the same
hash the server's rendered prompt shows (``<image 3f2a… 16 tokens>``). A message lists its
images' ids, so reading a conversation reads no image: the page asks for each one it shows
(``GET /lmserve/conversations/{id}/images/{image}``).

Only the raster formats a vision model takes are kept (PNG, JPEG, WebP, GIF, BMP), known by
their first bytes rather than by what the URL claims, each up to the server's default
``--max-image-size``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from lmserve.config import ImageLimits

MAX_IMAGE_BYTES = ImageLimits.max_bytes  # 20 MiB, as sent
MAX_IMAGES = ImageLimits.max_images  # per message
# A data: URL of the largest image: base64 (4 characters per 3 bytes) and its header.
MAX_DATA_URL = 4 * -(-MAX_IMAGE_BYTES // 3) + 100


class BadImage(ValueError):
    """Not an image the store keeps; the message says why."""


@dataclass(frozen=True)
class StoredImage:
    id: str  # SHA-256 of data, in hex
    media_type: str
    data: bytes

    def ref(self) -> dict[str, str | int]:
        """What a message says of it: no data."""
        return {"id": self.id, "media_type": self.media_type, "size": len(self.data)}

    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode('ascii')}"


def media_type(data: bytes) -> str | None:
    """The image format ``data`` starts as, or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    return None


def read_data_url(url: str) -> StoredImage:
    """The image of a ``data:image/...;base64,...`` URL, or :class:`BadImage`."""
    header, comma, payload = url.partition(",")
    if not header.lower().startswith("data:") or not comma:
        raise BadImage("An image must be a data: URL (data:image/png;base64,...).")
    if "base64" not in header.lower().split(";")[1:]:
        raise BadImage("An image's data: URL must be base64 (data:image/png;base64,...).")
    if len(payload) * 3 // 4 > MAX_IMAGE_BYTES + 3:
        raise BadImage(_too_large(len(payload) * 3 // 4))
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("An image's data: URL is not valid base64.") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImage(_too_large(len(data)))
    kind = media_type(data)
    if kind is None:
        raise BadImage("The image is not a PNG, JPEG, WebP, GIF or BMP image.")
    return StoredImage(hashlib.sha256(data).hexdigest(), kind, data)


def _too_large(size: int) -> str:
    return (
        f"The image is {size / 2**20:.1f} MiB; a conversation keeps images of up to "
        f"{MAX_IMAGE_BYTES // 2**20} MiB."
    )
