"""Searching the Hugging Face hub for GGUF models by keyword, as ``lms get <keywords>`` does.

The hub's model search (``/api/models?search=...&filter=gguf``) through huggingface_hub, so
``HF_ENDPOINT`` and ``HF_TOKEN`` apply here as everywhere else; most downloaded first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmserve import __version__
from lmserve.models.hub import first_line, hub_client_errors
from lmserve.models.references import DownloadError

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


def search_models(terms: str, limit: int = SEARCH_LIMIT) -> list[SearchHit]:
    """Repositories with GGUF files whose names contain ``terms`` (see :func:`is_search_term`),
    most downloaded first."""
    # Imported here: huggingface_hub takes a noticeable time to import.
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    api = HfApi(library_name="lmserve", library_version=__version__)
    try:
        found = api.list_models(search=terms.strip(), filter="gguf", sort="downloads", limit=limit)
        return [
            SearchHit(model.id, getattr(model, "downloads", None), getattr(model, "likes", None))
            for model in found
        ]
    except HfHubHTTPError as exc:
        raise DownloadError(f"the hub refused the search: {first_line(exc)}") from exc
    except hub_client_errors() as exc:
        raise DownloadError(f"cannot reach the hub at {api.endpoint}: {first_line(exc)}") from exc
