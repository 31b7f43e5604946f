"""Download GGUF models from Hugging Face into ``models/<publisher>/<repo>/``.

The bytes are fetched here, with httpx, so that a broken transfer resumes where it stopped,
progress can be reported, and nothing reaches ``models/`` unverified: each file is staged as
``downloads/<publisher>/<repo>/<file>.part`` and renamed into place only once its sha256
matches the hub's.  What to fetch (the plan) comes from :mod:`lmserve.models.hub`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from lmserve import __version__
from lmserve.models.hub import (
    TIMEOUT,
    ChecksumMismatch,
    DownloadPlan,
    RemoteFile,
    check_files,
    first_line,
    is_same_file,
    mb,
)
from lmserve.models.references import DownloadError, InvalidModelReference, check_repo_id

try:  # advisory locks keep two downloads of one file from writing the same part file
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

_CHUNK = 1 << 20
_PROGRESS_INTERVAL_S = 0.1


class TransferInterrupted(DownloadError):
    """The connection broke; the partial file is kept and the next call resumes it."""


class DownloadCancelled(DownloadError):
    """The ``cancel`` event was set; the partial file is kept and the next call resumes it."""


# --- download -------------------------------------------------------------------------------


def download(
    plan: DownloadPlan,
    *,
    staging_root: Path,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Path]:
    """Fetch ``plan``'s files, verify them, and move them into ``plan.target_dir``.

    Files are staged as ``staging_root/<publisher>/<repo>/<file>.part``; a part left by an
    interrupted or cancelled call is resumed.  ``progress(done, total)`` reports bytes.  Setting
    ``cancel`` stops the transfer (raising :class:`DownloadCancelled`) and keeps the part.
    Files already in place and intact are not fetched again.  Returns the final paths.
    """
    if plan.repo_id.count("/") != 1:
        raise InvalidModelReference(f"{plan.repo_id!r} is not publisher/repo")
    check_repo_id(plan.repo_id.split("/"), plan.repo_id)
    check_files(plan.files, plan.repo_id)
    for file in plan.files:
        target = plan.target(file)
        if os.path.lexists(target) and not is_same_file(target, file):
            raise DownloadError(
                f"{target} already exists and differs from {file.path} of {plan.repo_id}; "
                "move it away first"
            )
    staging = staging_root / Path(*plan.repo_id.split("/"))
    meter = _Meter(plan.total_bytes, progress)
    pending: list[tuple[RemoteFile, Path]] = []
    with httpx.Client(follow_redirects=True, timeout=TIMEOUT) as client:
        headers = _transfer_headers()
        for file in plan.files:
            if os.path.lexists(plan.target(file)):
                meter.finish_file(file.size)
                continue
            part = staging / f"{file.name}.part"
            _fetch(client, _file_url(plan, file), headers, file, part, meter, cancel)
            pending.append((file, part))
    # The catalog lists a sharded model by its first shard, so that one lands last: the model
    # appears only once all of it is in place.
    for file, part in reversed(pending):
        _move_into_place(part, plan.target(file))
    for folder in (staging, staging.parent):  # tidy up; other downloads may still use them
        with contextlib.suppress(OSError):
            folder.rmdir()
    return plan.targets


def _file_url(plan: DownloadPlan, file: RemoteFile) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(plan.repo_id, file.path, revision=plan.revision)


def _transfer_headers() -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(library_name="lmserve", library_version=__version__)
    # Byte ranges must count the file's own bytes, not those of a compressed encoding.
    headers["Accept-Encoding"] = "identity"
    return headers


class _Meter:
    """Turns per-file byte counts into ``progress(done, total)`` calls, at most 10 a second."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None) -> None:
        self.total = total
        self.callback = callback
        self.finished = 0
        self.last_call = 0.0

    def file_at(self, have: int, *, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if force or now - self.last_call >= _PROGRESS_INTERVAL_S:
            self.last_call = now
            self.callback(self.finished + have, self.total)

    def finish_file(self, size: int) -> None:
        self.finished += size
        self.file_at(0, force=True)


def _fetch(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    file: RemoteFile,
    part: Path,
    meter: _Meter,
    cancel: threading.Event | None,
) -> None:
    """Bring ``part`` to the full, verified content of ``file``."""
    part.parent.mkdir(parents=True, exist_ok=True)
    with _locked_part(part, file) as sink:
        digest, have = _rehash(sink, file.size)
        meter.file_at(have, force=True)
        try:
            digest, have = _transfer(client, url, headers, file, sink, digest, have, meter, cancel)
        except httpx.HTTPError as exc:
            sink.seek(0, os.SEEK_END)
            raise TransferInterrupted(
                f"the download of {file.name} broke off after {mb(sink.tell())} of "
                f"{mb(file.size)} ({first_line(exc)}); run it again to resume"
            ) from exc
        sink.flush()
        os.fsync(sink.fileno())
    if have != file.size:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{file.name}: received {have} bytes, the hub lists {file.size}; the partial file "
            "was deleted"
        )
    actual = digest.hexdigest()
    if file.sha256 is not None and actual != file.sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"sha256 mismatch for {file.name}: the hub lists {file.sha256}, the download has "
            f"{actual}; the partial file was deleted"
        )
    if file.sha256 is None:
        logger.warning("the hub lists no sha256 for %s; only its size was checked", file.path)
    meter.finish_file(file.size)


@contextlib.contextmanager
def _locked_part(part: Path, file: RemoteFile) -> Iterator[IO[bytes]]:
    # Append mode: every write lands at the end, after a rehash or a truncate alike.
    with part.open("a+b") as sink:
        if fcntl is not None:
            try:
                fcntl.flock(sink.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise DownloadError(
                    f"{file.name} is being downloaded by another process already"
                ) from exc
        yield sink


def _rehash(sink: IO[bytes], size: int) -> tuple[Any, int]:
    """The sha256 and length of what a previous call left in the part file."""
    digest = hashlib.sha256()
    sink.seek(0, os.SEEK_END)
    if sink.tell() > size:  # not a prefix of this file: start over
        sink.truncate(0)
        return digest, 0
    sink.seek(0)
    have = 0
    while chunk := sink.read(_CHUNK):
        digest.update(chunk)
        have += len(chunk)
    return digest, have


def _transfer(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    file: RemoteFile,
    sink: IO[bytes],
    digest: Any,
    have: int,
    meter: _Meter,
    cancel: threading.Event | None,
) -> tuple[Any, int]:
    # At most two requests: a ranged one, and a whole one if the range was not honoured.
    for _ in range(2):
        if have >= file.size:
            return digest, have
        _check_cancel(cancel, file, have)
        request_headers = dict(headers)
        if have:
            request_headers["Range"] = f"bytes={have}-"
        with client.stream("GET", url, headers=request_headers) as response:
            if response.status_code == 206 and _range_start(response) == have:
                pass  # the server continues where the part file ends
            elif response.status_code == 200 or (have and response.status_code in (206, 416)):
                # A whole file (the Range header was ignored) or a range we did not ask for.
                sink.truncate(0)
                digest, have = hashlib.sha256(), 0
                if response.status_code != 200:
                    continue
            else:
                raise _status_error(response, file)
            for chunk in response.iter_bytes():
                _check_cancel(cancel, file, have)
                sink.write(chunk)
                digest.update(chunk)
                have += len(chunk)
                meter.file_at(have)
                if have > file.size:
                    break  # more bytes than the hub lists: the size check rejects it
        return digest, have
    raise DownloadError(f"the server would not send {file.name} from its start")


def _range_start(response: httpx.Response) -> int | None:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _check_cancel(cancel: threading.Event | None, file: RemoteFile, have: int) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled(
            f"the download of {file.name} was cancelled at {mb(have)} of {mb(file.size)}; "
            "run it again to resume"
        )


def _status_error(response: httpx.Response, file: RemoteFile) -> DownloadError:
    code = response.status_code
    if code in (401, 403):
        return DownloadError(
            f"the hub denied access to {file.path} (HTTP {code}); if the model is gated or "
            "private, set HF_TOKEN"
        )
    if code == 404:
        return DownloadError(f"the hub has no file {file.path} (HTTP 404)")
    return DownloadError(f"the hub answered HTTP {code} for {file.path}")


def _move_into_place(part: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(part, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # Staging on another file system: copy next to the target, then rename, so that the
    # target only ever appears whole.
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as sink, part.open("rb") as source:
            shutil.copyfileobj(source, sink, _CHUNK)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    part.unlink()
