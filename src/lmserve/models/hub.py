"""What a model reference means on the Hugging Face hub: the repository, the files of one
quantization, their sizes and sha256, pinned to one commit.

huggingface_hub answers every question about the hub (which files a repository holds, their
sizes and sha256, the auth headers), so ``HF_ENDPOINT`` and ``HF_TOKEN`` work as they do for
every other Hugging Face tool.  The transfer itself is in :mod:`lmserve.models.download`.

A repository that holds vision projectors (``mmproj`` files) gives one to the model it is
downloaded with, chosen as the catalog chooses among a folder's
(:func:`lmserve.models.projectors.choose_projector`); it lands in the model's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from lmserve import __version__
from lmserve.models.projectors import choose_projector
from lmserve.models.references import (
    DEFAULT_REVISION,
    DownloadError,
    InvalidModelReference,
    check_repo_id,
    is_safe_file_name,
    parse,
)

logger = logging.getLogger(__name__)

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

_QUANT_TOKEN = re.compile(r"^(?:I?Q\d+(?:_[A-Z0-9]+)*|TQ\d_\d|B?F16|FP16|F32|FP32|MXFP4)$", re.I)
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")
TIMEOUT = httpx.Timeout(30.0, read=120.0)
_CHUNK = 1 << 20


class ChecksumMismatch(DownloadError):
    """A downloaded file is not what the hub lists; its partial file was deleted."""


class QuantizationNotFound(DownloadError):
    """The repository has no GGUF file of the requested quantization."""

    def __init__(self, message: str, available: list[str]) -> None:
        super().__init__(message)
        self.available = available


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
    """What :func:`download` fetches: the files of one quantization (the model's, then its
    vision projector's if the repository has one), pinned to one commit."""

    repo_id: str
    revision: str
    quantization: str | None
    files: tuple[RemoteFile, ...]
    target_dir: Path
    projector: RemoteFile | None = None  # the last of ``files``, when there is one

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
        return all(is_same_file(self.target(file), file) for file in self.files)


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


def _is_projector(file: RemoteFile) -> bool:
    # Vision projectors are not models of their own: they come with one.
    name = file.name.lower()
    return name.endswith(".gguf") and "mmproj" in name


def _file_sets(files: list[RemoteFile]) -> list[_FileSet]:
    sets: dict[str, _FileSet] = {}
    for file in files:
        if not file.name.lower().endswith(".gguf") or _is_projector(file):
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
    parsed = parse(ref)
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
    projectors = {file.path: file for file in files if _is_projector(file)}
    chosen = choose_projector(projectors, group.quantization)
    projector = projectors[chosen] if chosen is not None else None
    check_files([*group.files, *([projector] if projector else [])], parsed.repo_id)

    repo_id = _canonical_repo_id(parsed.repo_id, getattr(info, "id", None))
    publisher, repo = repo_id.split("/")
    return DownloadPlan(
        repo_id=repo_id,
        # Pinning the commit keeps every shard, and every resumed request, on the same bytes.
        revision=getattr(info, "sha", None) or parsed.revision,
        quantization=group.quantization,
        # The projector last: the download moves files into place last to first, so the
        # model appears with its projector beside it.
        files=(*group.files, *([projector] if projector else [])),
        target_dir=models_root / publisher / repo,
        projector=projector,
    )


@dataclass(frozen=True)
class DownloadOption:
    """One model a repository offers: a quantization (or, where its name tells two apart, a
    file), the path of its (first) file, and the bytes it takes with its vision projector."""

    label: str
    quantization: str | None
    path: str
    size: int


def download_options(ref: str) -> list[DownloadOption]:
    """What ``publisher/repo`` offers to download, the one taken when nobody chooses first
    (:func:`preferred_quantization`).  Raises :class:`DownloadError` with a message for users."""
    parsed = parse(ref)
    info = _model_info(parsed.repo_id, parsed.revision)
    files = [_remote_file(sibling) for sibling in info.siblings or []]
    projectors = {file.path: file for file in files if _is_projector(file)}
    options = []
    for group in _file_sets(files):  # in order of preference
        chosen = choose_projector(projectors, group.quantization)
        extra = projectors[chosen].size if chosen is not None else 0
        size = sum(file.size for file in group.files) + max(extra, 0)
        options.append(DownloadOption(group.label, group.quantization, group.files[0].path, size))
    return options


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
            timeout=TIMEOUT.read,
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
        raise DownloadError(f"the hub refused to describe {repo_id}: {first_line(exc)}") from exc
    except hub_client_errors() as exc:
        raise DownloadError(f"cannot reach the hub at {api.endpoint}: {first_line(exc)}") from exc


def hub_client_errors() -> tuple[type[BaseException], ...]:
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
    if _is_projector(chosen):
        raise DownloadError(
            f"{chosen.path} of {repo_id} is a vision projector, not a model: get the model "
            "(its projector comes with it)"
        )
    for group in _file_sets(files):
        if chosen in group.files:
            # One shard is no use on its own: its siblings come with it.
            return group if _shard_position(chosen.name) else _single(chosen)
    return _single(chosen)


def check_files(files: Iterable[RemoteFile], repo_id: str) -> None:
    names: set[str] = set()
    for file in files:
        # The names come from the network and become file names here.
        if not is_safe_file_name(file.name):
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
            return check_repo_id(answered.split("/"), answered)
    return asked


# --- checks shared with the transfer ----------------------------------------------------------


def is_same_file(path: Path, file: RemoteFile) -> bool:
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


def mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
