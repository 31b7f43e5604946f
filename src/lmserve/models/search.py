"""Searching the Hugging Face hub for GGUF models by keyword, as ``lms get <keywords>`` does.

The hub's model search (``/api/models?search=...&filter=gguf``) through huggingface_hub, so
``HF_ENDPOINT`` and ``HF_TOKEN`` apply here as everywhere else; most downloaded first.  No
keywords at all lists the most downloaded GGUF models.  A repository named outright
(``publisher/repo`` or its hub URL, as ``lms get https://huggingface.co/...`` sends it) is
looked up instead of searched for (:func:`find_repository`).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from lmserve import __version__
from lmserve.models.hub import TIMEOUT, first_line, hub_client_errors
from lmserve.models.references import DownloadError, InvalidModelReference, parse

SEARCH_LIMIT = 10
# Words, not a path or URL: letters, digits, spaces and the punctuation of model names.
_TERMS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}$")


@dataclass(frozen=True)
class SearchHit:
    """One repository the search found."""

    repo_id: str
    downloads: int | None
    likes: int | None


def is_search_term(ref: str) -> bool:
    """Whether ``ref`` is keywords rather than ``publisher/repo``, a URL or a file name."""
    text = ref.strip()
    return bool(_TERMS.match(text)) and not text.lower().endswith(".gguf")


def names_repository(ref: str) -> bool:
    """Whether ``ref`` names one repository: ``publisher/repo``, or a hub URL of a repository
    or of a file in one."""
    with contextlib.suppress(InvalidModelReference):
        parse(ref)
        return True
    return False


def search_models(terms: str, limit: int = SEARCH_LIMIT) -> list[SearchHit]:
    """Repositories with GGUF files whose names contain ``terms`` (see :func:`is_search_term`),
    most downloaded first; with no ``terms``, the most downloaded of all."""
    # Imported here: huggingface_hub takes a noticeable time to import.
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    api = HfApi(library_name="lmserve", library_version=__version__)
    try:
        found = api.list_models(
            search=terms.strip() or None, filter="gguf", sort="downloads", limit=limit
        )
        return [
            SearchHit(model.id, getattr(model, "downloads", None), getattr(model, "likes", None))
            for model in found
        ]
    except HfHubHTTPError as exc:
        raise DownloadError(f"the hub refused the search: {first_line(exc)}") from exc
    except hub_client_errors() as exc:
        raise DownloadError(f"cannot reach the hub at {api.endpoint}: {first_line(exc)}") from exc


def find_repository(ref: str) -> SearchHit | None:
    """The repository ``ref`` names (see :func:`names_repository`), spelt as the hub spells it,
    or None where the hub has no such repository."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    repo_id = parse(ref).repo_id
    api = HfApi(library_name="lmserve", library_version=__version__)
    try:
        info = api.model_info(repo_id, timeout=TIMEOUT.read)
    except GatedRepoError:
        return SearchHit(repo_id, None, None)  # there, but downloading it takes HF_TOKEN
    except RepositoryNotFoundError:
        return None
    except HfHubHTTPError as exc:
        raise DownloadError(f"the hub refused to describe {repo_id}: {first_line(exc)}") from exc
    except hub_client_errors() as exc:
        raise DownloadError(f"cannot reach the hub at {api.endpoint}: {first_line(exc)}") from exc
    # The hub's spelling, if it is the same repository (the answer comes from the network).
    answered = getattr(info, "id", None) or ""
    same = answered.lower() == repo_id.lower() and answered.count("/") == 1
    found = answered if same and names_repository(answered) else repo_id
    return SearchHit(found, getattr(info, "downloads", None), getattr(info, "likes", None))
