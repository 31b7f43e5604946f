"""The page's static files (``static/``, shipped as package data) and their security headers.

The files are read once, when the app is built, into a dictionary: a request names a key of
it, never a path on disk, so no path can reach outside ``static/``. Every answer carries the
page's Content-Security-Policy:

- scripts and styles only from this server (no inline script, no ``style`` attribute),
  images only from here or ``data:`` (model output cannot beacon data out through an image
  URL), fetches only to this server, no frames, forms, ``<base>`` or plugins;
- Trusted Types: the browser refuses any string assigned to ``innerHTML`` (and the other
  HTML sinks) unless it comes from DOMPurify's policy, so model text can reach the DOM as
  HTML only after sanitising, enforced by the browser rather than by our care alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

from starlette.requests import Request
from starlette.responses import Response

from lmserve.api.common.errors import NotFoundError

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types dompurify",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # Revalidate every time (a 304 when unchanged): an upgraded lmserve serves new files at
    # the same names.
    "Cache-Control": "no-cache",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # module scripts need a JavaScript type
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
PLAIN_TEXT = "text/plain; charset=utf-8"  # licences, the checksum list


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


class Assets:
    """The page's files by name (``index.html``, ``js/app.js``, ``vendor/...``)."""

    def __init__(self, files: Mapping[str, Asset]) -> None:
        self.files = dict(files)

    @classmethod
    def from_package(cls) -> Assets:
        return cls.from_folder(resources.files("lmserve.api.webui").joinpath("static"))

    @classmethod
    def from_folder(cls, root: Traversable) -> Assets:
        files: dict[str, Asset] = {}
        folders: list[tuple[str, Traversable]] = [("", root)]
        while folders:
            prefix, folder = folders.pop()
            for entry in folder.iterdir():
                if entry.name.startswith((".", "__")):
                    continue
                if entry.is_dir():
                    folders.append((f"{prefix}{entry.name}/", entry))
                    continue
                body = entry.read_bytes()
                suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
                files[prefix + entry.name] = Asset(
                    body,
                    CONTENT_TYPES.get(suffix, PLAIN_TEXT),
                    '"' + hashlib.sha256(body).hexdigest()[:32] + '"',
                )
        return cls(files)

    def response(self, name: str, request: Request) -> Response:
        asset = self.files.get(name)
        if asset is None:
            raise NotFoundError(f"The page has no file '{name[:100]}'.", code="not_found")
        headers = {**SECURITY_HEADERS, "ETag": asset.etag}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.content_type, headers=headers)
