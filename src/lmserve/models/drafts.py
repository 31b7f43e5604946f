"""Draft models for speculative decoding: a downloaded model loaded into a model's worker,
beside it, to draft tokens it then checks (LM Studio's ``draft_model``)."""

from __future__ import annotations

import logging

from lmserve.engine.types import DraftModelError
from lmserve.models.catalog import CatalogEntry
from lmserve.models.errors import DraftModelRefused
from lmserve.models.loader import LoadedModel

logger = logging.getLogger("lmserve.models")


async def attach_draft(
    model: LoadedModel, name: str, entry: CatalogEntry | None, public: str | None
) -> str:
    """Load the downloaded model ``name`` (its catalog ``entry`` and ``public`` name, or
    ``None`` where it is not downloaded) into ``model``'s worker as its draft model, if it is
    not already; its public name.  Raises :class:`DraftModelRefused`."""
    if entry is None or public is None:
        raise DraftModelRefused(
            f"The draft model '{name}' is not downloaded (see 'lmserve ls').",
            "draft_model_not_found",
        )
    if model.draft_model != public:
        try:
            await model.engine.load_draft(public, str(entry.path))
        except DraftModelError as exc:
            raise DraftModelRefused(
                f"'{public}' cannot draft for '{model.identifier}': {exc}. A draft model "
                "must share the model's vocabulary.",
                "draft_model_incompatible",
            ) from None
        model.draft_model = public
        logger.info("%s: drafting with %s for the requests that name it", model.identifier, public)
    return public
