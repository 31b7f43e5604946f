"""The files (images) the SDKs upload for a prediction's history, and where they are kept.

``client.files.prepare_image`` (``files.prepareImage`` in JavaScript) sends a file's name and
bytes (the ``files`` namespace's ``uploadFileBase64``, :mod:`lmserve.api.lmstudio_ws.system`)
and gets back an identifier, its file type and size; a chat history then names the file by
that identifier (a ``file`` part), and the prediction reads it as an image
(:mod:`lmserve.api.lmstudio_ws.history`).

LM Studio keeps such files as temporary files of the user.  lmserve keeps them in memory, in
one :class:`FileStore` per server (``app.state.sdk_files``): the most recently used files, up
to :data:`CAPACITY` bytes in all, since a history may name a file again in every later turn.
Older ones are forgotten, and a restart forgets all; a history that names a forgotten file
gets an error on its prediction saying to prepare the image again.  Nothing goes to disk:
lmserve keeps no one's images, and each file is as large as a WebSocket frame (the body cap,
``--max-body-size``) at most.
"""

from __future__ import annotations

import base64
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import PurePath

from lmserve.api.lmstudio_ws.errors import SDKError

CAPACITY = 64 * 2**20  # bytes of files kept, all together

# Image formats by their first bytes (WebP: RIFF....WEBP); the common layer decodes them.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)

# LM Studio's file types of documents, by the name's suffix.
_DOCUMENT_TYPES = {
    ".pdf": "application/pdf",
    ".txt": "text/plain",
    ".md": "text/plain",
    ".doc": "application/word",
    ".docx": "application/word",
}


def image_media_type(data: bytes) -> str | None:
    """The media type of an image format the bytes begin with, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    return None


@dataclass(frozen=True)
class StoredFile:
    identifier: str
    name: str
    data: bytes
    media_type: str | None  # an image's; None for any other file

    @property
    def file_type(self) -> str:
        """LM Studio's ``fileType``: ``image``, a document's type, ``text/other`` or
        ``unknown``."""
        if self.media_type is not None:
            return "image"
        known = _DOCUMENT_TYPES.get(PurePath(self.name).suffix.lower())
        if known is not None:
            return known
        try:
            self.data.decode("utf-8")
        except UnicodeDecodeError:
            return "unknown"
        return "text/other"

    @property
    def data_url(self) -> str:
        assert self.media_type is not None, "only an image is sent as a data: URL"
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode('ascii')}"


class FileStore:
    """Uploaded files by identifier, the most recently used kept, up to ``capacity`` bytes."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._size = 0

    def add(self, name: str, data: bytes) -> StoredFile:
        if len(data) > self.capacity:
            raise SDKError(
                f"The file is {len(data)} bytes: lmserve keeps {self.capacity} bytes of files."
            )
        stored = StoredFile(f"file-{secrets.token_hex(12)}", name, data, image_media_type(data))
        self._files[stored.identifier] = stored
        self._size += len(data)
        while self._size > self.capacity:
            _, oldest = self._files.popitem(last=False)
            self._size -= len(oldest.data)
        return stored

    def get(self, identifier: str) -> StoredFile | None:
        stored = self._files.get(identifier)
        if stored is not None:
            self._files.move_to_end(identifier)
        return stored

    def forgotten(self, identifier: str) -> str:
        """Why a history's file is not here, in a user's words."""
        return (
            f"No file '{identifier}' is kept on this server: prepare it again "
            "(client.files.prepare_image). lmserve keeps the files it is sent in memory, the "
            f"most recent {self.capacity // 2**20} MiB, until it restarts."
        )
