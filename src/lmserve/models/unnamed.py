"""Which model serves a request that names none (its ``model`` missing or null).

The one model loaded, whatever the API: every surface reaches it through
:meth:`ModelManager.acquire`.  With none loaded, or several, the request is refused
(:class:`NoModelNamed`, a 400 naming the loaded models): a request that names no model never
loads one, and never goes to a model picked at random.
"""

from __future__ import annotations

from lmserve.models.catalog import Catalog
from lmserve.models.errors import NoModelNamed


def sole_model(found: dict[str, str], catalog: Catalog, jit: bool, kind: str = "llm") -> str:
    """The identifier of the one model of ``kind`` (``llm``, ``embeddings``, ``reranker``) among
    ``found`` (the models present: identifier and model type, see
    :meth:`ModelManager.present`).  Any model embeds, so with no embedding model loaded an
    embedding request goes to the one model there is.  :class:`NoModelNamed` when there are
    none or several; it names ``catalog``'s models a request could name instead (loaded just
    in time where ``jit``)."""
    candidates = [name for name, model_type in found.items() if model_type == kind]
    if kind == "embeddings" and not candidates:
        candidates = list(found)
    if len(candidates) == 1:
        return candidates[0]
    what = "model"
    if len(candidates) < len(found):
        what = {"embeddings": "embedding model", "reranker": "reranker"}.get(kind, "chat model")
    downloaded = [
        catalog.public_id(entry)
        for entry in catalog.entries
        if kind == "embeddings" or entry.model_type == kind
    ]
    raise NoModelNamed(what, candidates, list(found), downloaded, jit)
