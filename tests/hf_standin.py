"""A stand-in for the Hugging Face hub, on a loopback port, for the download tests.

It answers what huggingface_hub and lmserve's downloader ask of the real hub:

* ``GET /api/models/{repo_id}`` and ``/api/models/{repo_id}/revision/{rev}``: the repository's
  description; with ``?blobs=True`` (what ``model_info(files_metadata=True)`` sends) each
  sibling also carries its size and, for LFS files, ``lfs: {sha256, size, pointerSize}``.
  An unknown repository gets 404 with ``X-Error-Code: RepoNotFound``, as on the hub.
* ``GET /api/models?search=...&filter=gguf&sort=downloads``: the search, as the hub documents
  it: repositories whose id contains the text (any case), with the tag, most downloaded first.
* ``GET``/``HEAD /{repo_id}/resolve/{revision}/{path}``: LFS files redirect (302) to a
  ``/cdn/...`` URL, as the hub redirects to its CDN; both honour ``Range`` (206 with
  ``Content-Range``) and send ``ETag``, ``X-Repo-Commit`` and ``Content-Length``.

Fault injection: :meth:`HubStandIn.cut_once` closes the connection after N bytes of a file's
body, once; ``advertise_sha256`` lists a wrong checksum; ``ignore_range`` answers 200 with the
whole file to ranged requests; ``chunk_delay_s`` slows the transfer down.  Every request is
recorded with its headers.

It is ``http.server`` with a thread per connection: byte-exact control over what is sent and
when the socket closes is the point, and nothing here needs to be fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/([^/]+/[^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_WRITE_CHUNK = 1 << 20
# What would make a process use another hub, or none: a token of this machine's, offline mode.
_HUB_VARIABLES_LEFT_OUT = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")


def hub_env(endpoint: str, hf_home: Path) -> dict[str, str]:
    """This process's environment, for a process that is to use the hub at ``endpoint``.

    huggingface_hub (and so lmserve) goes to ``endpoint``, sends no telemetry, keeps its cache
    (and would look for a token) in ``hf_home``, reaches loopback without a proxy, and has no
    token or offline switch of this machine's.
    """
    env = {key: value for key, value in os.environ.items() if key not in _HUB_VARIABLES_LEFT_OUT}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(hf_home),
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


@dataclass
class HubFile:
    data: bytes | memoryview
    sha256: str
    lfs: bool = True
    advertise_sha256: str | None = None  # what the API lists, if not the true sha256

    @property
    def listed_sha256(self) -> str:
        return self.advertise_sha256 or self.sha256


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case


@dataclass
class HubStandIn:
    repos: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    commits: dict[str, str] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    downloads: dict[str, int] = field(default_factory=dict)  # what the search sorts by
    ignore_range: bool = False
    chunk_delay_s: float = 0.0  # pause after each MiB sent, to make a transfer last
    _cuts: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # --- set-up -----------------------------------------------------------------------------

    def add_file(
        self,
        repo_id: str,
        path: str,
        data: bytes | memoryview,
        *,
        sha256: str | None = None,
        lfs: bool = True,
        advertise_sha256: str | None = None,
    ) -> HubFile:
        """Serve ``data`` as ``path`` of ``repo_id`` (pass ``sha256`` to skip hashing it)."""
        digest = sha256 or hashlib.sha256(data).hexdigest()
        entry = HubFile(data, digest, lfs=lfs, advertise_sha256=advertise_sha256)
        self.repos.setdefault(repo_id, {})[path] = entry
        self.commits.setdefault(repo_id, hashlib.sha1(repo_id.encode()).hexdigest())
        return entry

    def cut_once(self, repo_id: str, path: str, after_bytes: int) -> None:
        """The next body sent for this file stops after ``after_bytes`` and the socket closes."""
        with self._lock:
            self._cuts[(repo_id, path)] = after_bytes

    # --- what was asked ---------------------------------------------------------------------

    def file_requests(self, name: str = "") -> list[Recorded]:
        """GET requests answered with file bytes (after redirects), optionally for one file."""
        return [
            request
            for request in self.requests
            if request.method == "GET"
            and self._serves_bytes(request.path)
            and request.path.endswith(name)
        ]

    def range_headers(self, name: str = "") -> list[str | None]:
        """The ``Range`` header (or None) of each file request, in order."""
        return [request.headers.get("range") for request in self.file_requests(name)]

    def download_requests(self) -> list[Recorded]:
        """Every request for a file, whatever its answer: none means nothing was fetched."""
        return [
            request
            for request in self.requests
            if "/resolve/" in request.path or request.path.startswith("/cdn/")
        ]

    def _serves_bytes(self, path: str) -> bool:
        if path.startswith("/cdn/"):
            return True
        match = _RESOLVE.match(path)
        entry = self.repos.get(match.group(1), {}).get(match.group(3)) if match else None
        return entry is not None and not entry.lfs

    # --- life -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() it first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def env(self, hf_home: Path) -> dict[str, str]:
        """The environment a process needs to use this stand-in as its hub (see :func:`hub_env`)."""
        return hub_env(self.url, hf_home)

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- used by the handler ----------------------------------------------------------------

    def _record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_cut(self, repo_id: str, path: str) -> int | None:
        with self._lock:
            return self._cuts.pop((repo_id, path), None)

    def _search_json(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        text = query.get("search", [""])[0].lower()
        tags = set(query.get("filter", []))
        found = [
            repo_id
            for repo_id, files in self.repos.items()
            if text in repo_id.lower()
            and (not tags or ("gguf" in tags and any(p.endswith(".gguf") for p in files)))
        ]
        if query.get("sort") == ["downloads"]:
            found.sort(key=lambda repo_id: -self.downloads.get(repo_id, 0))
        limit = int(query.get("limit", [str(len(found))])[0])
        return [
            {
                "_id": self.commits[repo_id][:24],
                "id": repo_id,
                "modelId": repo_id,
                "downloads": self.downloads.get(repo_id, 0),
                "likes": 0,
                "private": False,
                "tags": ["gguf"],
            }
            for repo_id in found[:limit]
        ]

    def _model_json(self, repo_id: str, with_blobs: bool) -> dict[str, Any]:
        siblings = []
        for path, entry in sorted(self.repos[repo_id].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling["size"] = len(entry.data)
                sibling["blobId"] = hashlib.sha1(entry.sha256.encode()).hexdigest()
                if entry.lfs:
                    sibling["lfs"] = {
                        "sha256": entry.listed_sha256,
                        "size": len(entry.data),
                        "pointerSize": 134,
                    }
            siblings.append(sibling)
        publisher = repo_id.split("/")[0]
        return {
            "_id": self.commits[repo_id][:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": publisher,
            "sha": self.commits[repo_id],
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": ["gguf"],
            "library_name": "gguf",
            "siblings": siblings,
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    @property
    def hub(self) -> HubStandIn:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def _dispatch(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.hub._record(Recorded(self.command, path, query, headers))
        if path == "/api/models":
            self._json(200, self.hub._search_json(query))
        elif match := _API.match(path):
            self._model_info(match.group(1), match.group(2), query)
        elif match := _RESOLVE.match(path):
            self._resolve(match.group(1), match.group(2), match.group(3), send_body)
        elif match := _CDN.match(path):
            entry = self.hub.repos.get(match.group(1), {}).get(match.group(2))
            if entry is None:
                self._error(404, "EntryNotFound", "Entry not found")
            else:
                self._send_file(match.group(1), match.group(2), entry, send_body)
        else:
            self._error(404, None, "Not found")

    def _known_revision(self, repo_id: str, revision: str | None) -> bool:
        return revision in (None, "main", self.hub.commits[repo_id])

    def _model_info(self, repo_id: str, revision: str | None, query: dict[str, list[str]]) -> None:
        if repo_id not in self.hub.repos:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        if not self._known_revision(repo_id, revision):
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return
        with_blobs = query.get("blobs", ["false"])[0].lower() == "true"
        self._json(200, self.hub._model_json(repo_id, with_blobs))

    def _resolve(self, repo_id: str, revision: str, path: str, send_body: bool) -> None:
        if repo_id not in self.hub.repos:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        if not self._known_revision(repo_id, revision):
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return
        entry = self.hub.repos[repo_id].get(path)
        if entry is None:
            self._error(404, "EntryNotFound", "Entry not found")
            return
        if entry.lfs:
            # The hub sends LFS files from its CDN: a redirect the client must follow.
            self.send_response(302)
            self.send_header("Location", f"/cdn/{repo_id}/{quote(path)}")
            self.send_header("X-Repo-Commit", self.hub.commits[repo_id])
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(len(entry.data)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(repo_id, path, entry, send_body)

    def _send_file(self, repo_id: str, path: str, entry: HubFile, send_body: bool) -> None:
        total = len(entry.data)
        start, end, status = 0, total - 1, 200
        requested = self.headers.get("Range")
        if requested and not self.hub.ignore_range:
            match = _RANGE.match(requested.strip())
            if match:
                start = int(match.group(1))
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
                status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.sha256}"')
        self.send_header("X-Repo-Commit", self.hub.commits[repo_id])
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        if not send_body:
            return
        body = memoryview(entry.data)[start : end + 1]
        cut = self.hub._take_cut(repo_id, path)
        if cut is not None:
            body = body[:cut]
        try:
            for offset in range(0, len(body), _WRITE_CHUNK):
                self.wfile.write(body[offset : offset + _WRITE_CHUNK])
                if self.hub.chunk_delay_s:
                    time.sleep(self.hub.chunk_delay_s)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if cut is not None:
            # Break the connection mid-body, as a dropped network would.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
