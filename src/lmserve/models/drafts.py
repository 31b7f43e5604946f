"""Draft models for speculative decoding: a downloaded model loaded into a model's worker,
beside it, to draft tokens it then checks (LM Studio's ``draft_model``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lmserve.engine.types import DraftModelError
from lmserve.models.errors import DraftModelRefused
from lmserve.models.loader import LoadedModel

if TYPE_CHECKING:
    from lmserve.models.manager import ModelManager

logger = logging.getLogger("lmserve.models")


async def attach_draft(models: ModelManager, model: LoadedModel, name: str) -> str:
    """Load the downloaded model ``name`` into ``model``'s worker as its draft model, if
    it is not already; its public name.  Raises :class:`DraftModelRefused`."""
    entry = models.resolve_entry(name)
    if entry is None:
        raise DraftModelRefused(
            f"The draft model '{name}' is not downloaded (see 'lmserve ls').",
            "draft_model_not_found",
        )
    public = models.catalog.public_id(entry)
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
