"""Which model serves a request that names none (its ``model`` missing or null).

The one model loaded, whatever the API: every surface reaches it through
:meth:`ModelManager.acquire`.  With none loaded, or several, the request is refused
(:class:`NoModelNamed`, a 400 naming the loaded models): a request that names no model never
loads one, and never goes to a model picked at random.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmserve.models.errors import NoModelNamed

if TYPE_CHECKING:
    from lmserve.models.manager import ModelManager


def present(models: ModelManager) -> dict[str, str]:
    """The models loaded, being loaded or waiting to be loaded again after a crash: their
    identifiers and catalog model types (``llm`` where the catalog no longer knows one)."""
    found = {model.identifier: model.entry.model_type for model in models.loaded()}
    for identifier in [*models.loading, *models.restarting]:
        entry = models.catalog.resolve(identifier)
        found.setdefault(identifier, entry.model_type if entry is not None else "llm")
    return found


def sole_model(models: ModelManager, kind: str = "llm") -> str:
    """The identifier of the one model of ``kind`` (``llm`` or ``embeddings``) that is
    present (:func:`present`).  Any model embeds, so with no embedding model loaded an
    embedding request goes to the one model there is.  :class:`NoModelNamed` when there are
    none or several."""
    found = present(models)
    candidates = [name for name, model_type in found.items() if model_type == kind]
    if kind == "embeddings" and not candidates:
        candidates = list(found)
    if len(candidates) == 1:
        return candidates[0]
    what = "model"
    if len(candidates) < len(found):
        what = "embedding model" if kind == "embeddings" else "chat model"
    catalog = models.catalog
    downloaded = [
        catalog.public_id(entry)
        for entry in catalog.entries
        if kind == "embeddings" or entry.model_type == kind
    ]
    raise NoModelNamed(what, candidates, list(found), downloaded, models.jit)
