"""Download GGUF models from Hugging Face into ``models/<publisher>/<repo>/``.

huggingface_hub answers every question about the hub (which files a repository holds, their
sizes and sha256, a file's URL, the auth headers), so ``HF_ENDPOINT`` and ``HF_TOKEN`` work as
they do for every other Hugging Face tool.  The bytes themselves are fetched here, with httpx,
so that a broken transfer resumes where it stopped, progress can be reported, and nothing
reaches ``models/`` unverified: each file is staged as ``downloads/<publisher>/<repo>/<file>.part``
and renamed into place only once its sha256 matches the hub's.
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpx

from lmserve import __version__

try:  # advisory locks keep two downloads of one file from writing the same part file
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

DEFAULT_REVISION = "main"

# Taken, in this order, when a repository offers several quantizations and nobody chose one.
QUANTIZATION_PREFERENCE: tuple[str, ...] = (
    "Q4_K_M",
    "Q4_K_S",
    "Q5_K_M",
    "Q4_0",
    "Q8_0",
    "Q5_K_S",
    "Q6_K",
    "IQ4_XS",
    "IQ4_NL",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
)
_FLOAT_TYPES = frozenset({"F16", "BF16", "F32", "MXFP4"})

_HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
# The hub's own rule for user, organisation and repository names (``validate_repo_id``),
# restricted to ASCII: they become folder names on this machine.
_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$")
_FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_QUANT_REQUEST = re.compile(r"^[A-Za-z0-9_]+$")
_QUANT_TOKEN = re.compile(r"^(?:I?Q\d+(?:_[A-Z0-9]+)*|TQ\d_\d|B?F16|FP16|F32|FP32|MXFP4)$", re.I)
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

_CHUNK = 1 << 20
_PROGRESS_INTERVAL_S = 0.1
_TIMEOUT = httpx.Timeout(30.0, read=120.0)


class DownloadError(Exception):
    """A download could not be planned or completed; the message is fit for users."""


class InvalidModelReference(DownloadError):
    """The reference names no Hugging Face repository or file we accept."""


class ChecksumMismatch(DownloadError):
    """A downloaded file is not what the hub lists; its partial file was deleted."""


class QuantizationNotFound(DownloadError):
    """The repository has no GGUF file of the requested quantization."""

    def __init__(self, message: str, available: list[str]) -> None:
        super().__init__(message)
        self.available = available


class TransferInterrupted(DownloadError):
    """The connection broke; the partial file is kept and the next call resumes it."""


class DownloadCancelled(DownloadError):
    """The ``cancel`` event was set; the partial file is kept and the next call resumes it."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repository: its path in the repository, size and LFS sha256."""

    path: str
    size: int
    sha256: str | None

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class DownloadPlan:
    """What :func:`download` fetches: the files of one quantization, pinned to one commit."""

    repo_id: str
    revision: str
    quantization: str | None
    files: tuple[RemoteFile, ...]
    target_dir: Path

    @property
    def total_bytes(self) -> int:
        return sum(file.size for file in self.files)

    def target(self, file: RemoteFile) -> Path:
        return self.target_dir / file.name

    @property
    def targets(self) -> list[Path]:
        return [self.target(file) for file in self.files]

    def already_present(self) -> bool:
        """True if every file is in place with the hub's size and sha256 (hashes them)."""
        return all(_is_same_file(self.target(file), file) for file in self.files)


@dataclass(frozen=True)
class _Reference:
    repo_id: str
    quantization: str | None
    filename: str | None
    revision: str


# --- references -----------------------------------------------------------------------------


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """Split a model reference into ``(repo_id, quantization, filename)``.

    Accepts ``publisher/repo``, ``publisher/repo@q4_k_m`` and hub URLs
    (``https://huggingface.co/publisher/repo``, ``hf.co/...``, or the URL of one ``.gguf`` file).
    Raises :class:`InvalidModelReference` for anything else.
    """
    parsed = _parse(ref)
    return parsed.repo_id, parsed.quantization, parsed.filename


def _parse(ref: str) -> _Reference:
    text = ref.strip()
    if not text:
        raise InvalidModelReference("the model reference is empty")
    quantization = None
    base, at, suffix = text.rpartition("@")
    if at:
        if not base or not _QUANT_REQUEST.match(suffix):
            raise InvalidModelReference(
                f"{ref!r}: '@' must follow publisher/repo and precede a quantization, "
                "e.g. publisher/repo@q4_k_m"
            )
        text, quantization = base, suffix.upper()
    if "://" in text or text.lower().split("/", 1)[0] in _hub_hosts():
        repo_id, filename, revision = _parse_url(text, ref)
    else:
        repo_id, filename, revision = _parse_short(text, ref), None, DEFAULT_REVISION
    if quantization and filename:
        raise InvalidModelReference(
            f"{ref!r} names both a file and a quantization; give one of them"
        )
    return _Reference(repo_id, quantization, filename, revision)


def _hub_hosts() -> frozenset[str]:
    # A mirror set as HF_ENDPOINT is a hub too: its URLs are accepted like huggingface.co's.
    endpoint_host = urlsplit(os.environ.get("HF_ENDPOINT", "")).hostname
    return _HUB_HOSTS | {endpoint_host} if endpoint_host else _HUB_HOSTS


def _parse_short(text: str, ref: str) -> str:
    if text.startswith(("/", "\\", "~")) or text.lower().endswith(".gguf"):
        raise InvalidModelReference(
            f"{ref!r} looks like a local path; lmserve get takes publisher/repo "
            "(to add a file from disk, use lmserve import)"
        )
    parts = text.split("/")
    if len(parts) != 2:
        raise InvalidModelReference(
            f"{ref!r} is not a model reference: expected publisher/repo, "
            "e.g. HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
        )
    return _repo_id(parts, ref)


def _parse_url(text: str, ref: str) -> tuple[str, str | None, str]:
    url = urlsplit(text if "://" in text else f"https://{text}")
    if url.scheme not in ("http", "https"):
        raise InvalidModelReference(f"{ref!r}: only http(s) URLs of the Hugging Face hub work")
    if url.username or url.password or (url.hostname or "") not in _hub_hosts():
        raise InvalidModelReference(
            f"{ref!r} is not a Hugging Face URL (expected huggingface.co/publisher/repo)"
        )
    path = url.path.removeprefix("/").removesuffix("/")
    parts = [unquote(part) for part in path.split("/")] if path else []
    if len(parts) < 2:
        raise InvalidModelReference(f"{ref!r} names no repository (expected .../publisher/repo)")
    repo_id = _repo_id(parts[:2], ref)
    rest = parts[2:]
    if not rest:
        return repo_id, None, DEFAULT_REVISION
    if rest[0] == "tree" and len(rest) == 2:
        return repo_id, None, _revision(rest[1], ref)
    if rest[0] in ("blob", "resolve") and len(rest) >= 3:
        revision = _revision(rest[1], ref)
        for part in rest[2:]:
            if not _FILE_PART.match(part) or ".." in part:
                raise InvalidModelReference(f"{ref!r}: {part!r} is not an acceptable file name")
        if not rest[-1].lower().endswith(".gguf"):
            raise InvalidModelReference(f"{ref!r} is not a .gguf file")
        return repo_id, "/".join(rest[2:]), revision
    raise InvalidModelReference(
        f"{ref!r} is neither a repository URL nor the URL of a .gguf file in one"
    )


def _repo_id(parts: list[str], ref: str) -> str:
    for part in parts:
        if not part:
            raise InvalidModelReference(f"{ref!r} has an empty publisher or repository name")
        if not _NAME.match(part) or ".." in part or "--" in part:
            raise InvalidModelReference(
                f"{ref!r}: {part!r} is not a valid publisher or repository name "
                "(letters, digits, '.', '_' and '-' only)"
            )
    return "/".join(parts)


def _revision(value: str, ref: str) -> str:
    if not _REVISION.match(value) or ".." in value:
        raise InvalidModelReference(f"{ref!r}: {value!r} is not an acceptable revision")
    return value


# --- quantizations --------------------------------------------------------------------------


def quantization_of(file_name: str) -> str | None:
    """The quantization a GGUF file name states, upper case (``x.q4_k_m.gguf`` → ``Q4_K_M``)."""
    stem = _shard_base(PurePosixPath(file_name).name)
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    # Quantization names contain '_', so only '.' and '-' separate them from the model name.
    for token in reversed(re.split(r"[.\-]", stem)):
        if _QUANT_TOKEN.match(token):
            upper = token.upper()
            return {"FP16": "F16", "FP32": "F32"}.get(upper, upper)
    return None


def preferred_quantization(labels: list[str]) -> str:
    """The label to take when nobody chose: first in QUANTIZATION_PREFERENCE, floats last."""
    if not labels:
        raise ValueError("no quantization to choose from")
    return min(labels, key=_preference_rank)


def _preference_rank(label: str) -> tuple[int, int, str]:
    upper = label.upper()
    if upper in QUANTIZATION_PREFERENCE:
        return (0, QUANTIZATION_PREFERENCE.index(upper), upper)
    return (2 if upper in _FLOAT_TYPES else 1, 0, upper)


def _shard_base(name: str) -> str:
    """``x-00002-of-00003.gguf`` → ``x.gguf``: the name all shards of one model share."""
    stem, dot, extension = name.rpartition(".")
    return _SHARD.sub("", stem) + dot + extension if dot else _SHARD.sub("", name)


def _shard_position(name: str) -> tuple[int, int] | None:
    match = _SHARD.search(name.rpartition(".")[0])
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class _FileSet:
    """The GGUF files that make one model: one file, or all the shards of a split one."""

    base: str
    quantization: str | None
    files: list[RemoteFile]
    label: str = ""

    def missing_shards(self) -> list[int]:
        positions = [_shard_position(file.name) for file in self.files]
        counts = {position[1] for position in positions if position}
        if not counts:
            return []
        expected = set(range(1, max(counts) + 1))
        return sorted(expected - {position[0] for position in positions if position})


def _file_sets(files: list[RemoteFile]) -> list[_FileSet]:
    sets: dict[str, _FileSet] = {}
    for file in files:
        name = file.name.lower()
        # Vision projectors are not models of their own: they come with one.
        if not name.endswith(".gguf") or "mmproj" in name:
            continue
        base = str(PurePosixPath(file.path).with_name(_shard_base(file.name)))
        group = sets.setdefault(base, _FileSet(base, quantization_of(file.name), []))
        group.files.append(file)
    by_label: dict[str, list[_FileSet]] = {}
    for group in sets.values():
        group.files.sort(key=lambda file: _shard_position(file.name) or (0, 0))
        label = group.quantization or PurePosixPath(group.base).name
        by_label.setdefault(label, []).append(group)
    for label, groups in by_label.items():
        # Two models of one quantization in one repository: their file names tell them apart.
        for group in groups:
            group.label = label if len(groups) == 1 else PurePosixPath(group.base).name
    return sorted(sets.values(), key=lambda group: _preference_rank(group.label))


def _select(
    sets: list[_FileSet],
    repo_id: str,
    quantization: str | None,
    choose: Callable[[list[str]], str],
) -> _FileSet:
    labels = [group.label for group in sets]
    if not sets:
        raise DownloadError(f"{repo_id} has no GGUF model file")
    if quantization:
        wanted = quantization.upper()
        matches = [
            group
            for group in sets
            if group.label.upper() == wanted or (group.quantization or "") == wanted
        ]
        if not matches:
            raise QuantizationNotFound(
                f"{repo_id} has no {wanted} GGUF file; available: {', '.join(labels)}", labels
            )
    else:
        matches = sets
    if len(matches) == 1:
        return matches[0]
    choice = choose([group.label for group in matches])
    for group in matches:
        if group.label == choice:
            return group
    raise QuantizationNotFound(f"{choice!r} is not one of {', '.join(labels)}", labels)


# --- planning -------------------------------------------------------------------------------


def resolve_plan(
    ref: str,
    *,
    models_root: Path,
    quantization: str | None = None,
    choose: Callable[[list[str]], str] | None = None,
) -> DownloadPlan:
    """Ask the hub what ``ref`` means and plan its download into ``models_root``.

    ``quantization`` (or ``ref``'s ``@quant``) picks among the repository's GGUF files; without
    it a single candidate is taken as is, and several are handed to ``choose`` (default:
    :func:`preferred_quantization`).  Raises :class:`DownloadError` with a message for users.
    """
    parsed = _parse(ref)
    if quantization and parsed.quantization and quantization.upper() != parsed.quantization:
        raise InvalidModelReference(
            f"{ref!r} asks for {parsed.quantization} but the quantization given is "
            f"{quantization.upper()}"
        )
    if quantization and parsed.filename:
        raise InvalidModelReference(f"{ref!r} names one file; a quantization cannot apply")
    wanted = quantization.upper() if quantization else parsed.quantization
    info = _model_info(parsed.repo_id, parsed.revision)
    files = [_remote_file(sibling) for sibling in info.siblings or []]

    if parsed.filename:
        group = _group_of_file(files, parsed.filename, parsed.repo_id)
    else:
        group = _select(_file_sets(files), parsed.repo_id, wanted, choose or preferred_quantization)
    missing = group.missing_shards()
    if missing:
        raise DownloadError(
            f"{parsed.repo_id} lacks shard(s) {', '.join(map(str, missing))} of {group.base}"
        )
    _check_files(group.files, parsed.repo_id)

    repo_id = _canonical_repo_id(parsed.repo_id, getattr(info, "id", None))
    publisher, repo = repo_id.split("/")
    return DownloadPlan(
        repo_id=repo_id,
        # Pinning the commit keeps every shard, and every resumed request, on the same bytes.
        revision=getattr(info, "sha", None) or parsed.revision,
        quantization=group.quantization,
        files=tuple(group.files),
        target_dir=models_root / publisher / repo,
    )


def _model_info(repo_id: str, revision: str) -> Any:
    # Imported here: huggingface_hub takes a noticeable time to import, and only this needs it.
    from huggingface_hub import HfApi
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(library_name="lmserve", library_version=__version__)
    try:
        return api.model_info(
            repo_id,
            revision=None if revision == DEFAULT_REVISION else revision,
            files_metadata=True,
            timeout=_TIMEOUT.read,
        )
    except GatedRepoError as exc:
        raise DownloadError(
            f"{repo_id} is gated: accept its terms on the hub, then set HF_TOKEN"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise DownloadError(
            f"no model repository {repo_id} on {api.endpoint} (if it is private, set HF_TOKEN)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise DownloadError(f"{repo_id} has no revision {revision!r}") from exc
    except HfHubHTTPError as exc:
        raise DownloadError(f"the hub refused to describe {repo_id}: {_first_line(exc)}") from exc
    except _hub_client_errors() as exc:
        raise DownloadError(f"cannot reach the hub at {api.endpoint}: {_first_line(exc)}") from exc


def _hub_client_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub raises its HTTP client's own exceptions for transport failures, and the
    # client differs between its versions; HfHubHTTPError derives from that client's base
    # error class, so take it from there.  OSError covers clients whose errors are IOErrors.
    from huggingface_hub.utils import HfHubHTTPError

    bases = [base for base in HfHubHTTPError.__mro__[1:] if base.__name__ == "HTTPError"]
    return (OSError, httpx.HTTPError, *bases)


def _remote_file(sibling: Any) -> RemoteFile:
    lfs = getattr(sibling, "lfs", None)
    size = sibling.size if sibling.size is not None else (lfs.size if lfs else None)
    sha256 = lfs.sha256.lower() if lfs and getattr(lfs, "sha256", None) else None
    return RemoteFile(path=sibling.rfilename, size=-1 if size is None else int(size), sha256=sha256)


def _group_of_file(files: list[RemoteFile], filename: str, repo_id: str) -> _FileSet:
    by_path = {file.path: file for file in files}
    chosen = by_path.get(filename) or next(
        (file for file in files if file.path.lower() == filename.lower()), None
    )
    if chosen is None:
        raise DownloadError(f"{repo_id} has no file {filename}")
    for group in _file_sets(files):
        if chosen in group.files:
            # One shard is no use on its own: its siblings come with it.
            return group if _shard_position(chosen.name) else _single(chosen)
    return _single(chosen)


def _check_files(files: Iterable[RemoteFile], repo_id: str) -> None:
    names: set[str] = set()
    for file in files:
        # The names come from the network and become file names here.
        if not _FILE_PART.match(file.name) or ".." in file.name:
            raise DownloadError(f"{repo_id}: refusing the unsafe file name {file.path!r}")
        if file.name in names:
            raise DownloadError(f"{repo_id}: two files to download are named {file.name}")
        if file.size < 0:
            raise DownloadError(f"the hub lists no size for {file.path} of {repo_id}")
        names.add(file.name)


def _single(file: RemoteFile) -> _FileSet:
    quantization = quantization_of(file.name)
    return _FileSet(file.path, quantization, [file], quantization or file.name)


def _canonical_repo_id(asked: str, answered: str | None) -> str:
    # The hub answers with the repository's own spelling; use it for the folder name only if
    # it is the same repository and a safe name (the answer comes from the network).
    if answered and answered.lower() == asked.lower() and answered.count("/") == 1:
        with contextlib.suppress(InvalidModelReference):
            return _repo_id(answered.split("/"), answered)
    return asked


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
    _repo_id(plan.repo_id.split("/"), plan.repo_id)
    _check_files(plan.files, plan.repo_id)
    for file in plan.files:
        target = plan.target(file)
        if os.path.lexists(target) and not _is_same_file(target, file):
            raise DownloadError(
                f"{target} already exists and differs from {file.path} of {plan.repo_id}; "
                "move it away first"
            )
    staging = staging_root / Path(*plan.repo_id.split("/"))
    meter = _Meter(plan.total_bytes, progress)
    pending: list[tuple[RemoteFile, Path]] = []
    with httpx.Client(follow_redirects=True, timeout=_TIMEOUT) as client:
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
                f"the download of {file.name} broke off after {_mb(sink.tell())} of "
                f"{_mb(file.size)} ({_first_line(exc)}); run it again to resume"
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
            f"the download of {file.name} was cancelled at {_mb(have)} of {_mb(file.size)}; "
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


def _is_same_file(path: Path, file: RemoteFile) -> bool:
    try:
        if not path.is_file() or path.stat().st_size != file.size:
            return False
    except OSError:
        return False
    return file.sha256 is None or sha256_of(path) == file.sha256


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
