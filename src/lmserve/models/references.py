"""Model references as users write them for ``lmserve get``: ``publisher/repo``,
``publisher/repo@q4_k_m``, or a Hugging Face URL of a repository or of one ``.gguf`` file.

Everything here is checked before anything is fetched: a reference either names a repository
(and maybe a revision and a file) in characters that cannot leave the models folder, or it is
an :class:`InvalidModelReference` with a message fit for users.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_REVISION = "main"

_HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
# The hub's own rule for user, organisation and repository names (``validate_repo_id``),
# restricted to ASCII: they become folder names on this machine.
_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$")
_FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_QUANT_REQUEST = re.compile(r"^[A-Za-z0-9_]+$")


class DownloadError(Exception):
    """A download could not be planned or completed; the message is fit for users."""


class InvalidModelReference(DownloadError):
    """The reference names no Hugging Face repository or file we accept."""


@dataclass(frozen=True)
class Reference:
    """What a reference names: a repository, maybe a quantization or one file, a revision."""

    repo_id: str
    quantization: str | None
    filename: str | None
    revision: str


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """Split a model reference into ``(repo_id, quantization, filename)``.

    Accepts ``publisher/repo``, ``publisher/repo@q4_k_m`` and hub URLs
    (``https://huggingface.co/publisher/repo``, ``hf.co/...``, or the URL of one ``.gguf`` file).
    Raises :class:`InvalidModelReference` for anything else.
    """
    parsed = parse(ref)
    return parsed.repo_id, parsed.quantization, parsed.filename


def parse(ref: str) -> Reference:
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
    return Reference(repo_id, quantization, filename, revision)


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
    return check_repo_id(parts, ref)


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
    repo_id = check_repo_id(parts[:2], ref)
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


def check_repo_id(parts: list[str], ref: str) -> str:
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


def is_safe_file_name(name: str) -> bool:
    """Whether ``name`` may be a file name under the models folder (no path, no "..")."""
    return bool(_FILE_PART.match(name)) and ".." not in name
