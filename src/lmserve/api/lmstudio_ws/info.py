"""Models as the SDKs describe them (``LlmInfo``, ``LlmInstanceInfo``, their embedding
twins), and which model a specifier names.

An instance's ``instanceReference`` is its identifier: a handle the SDK got from a load keeps
working when lmserve loads the model again (after a crash, or with a longer context).  The
embedding namespace serves any model, as ``/v1/embeddings`` does (a chat model's embeddings
are mean-pooled), and describes it as an embedding model there.  Optional fields are left
out rather than sent as null: the JavaScript SDK refuses a null where it expects a number.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from lmserve.api.lmstudio_ws.errors import no_model_matching
from lmserve.api.lmstudio_ws.protocol import InstanceSpecifier, ModelSpecifier
from lmserve.models.catalog import CatalogEntry
from lmserve.models.errors import NoModelNamed
from lmserve.models.loader import LoadedModel
from lmserve.models.manager import ModelManager

Domain = Literal["llm", "embedding"]
_BITS = re.compile(r"(\d+)")


def _params_string(entry: CatalogEntry) -> str | None:
    label = entry.header.metadata.get("general.size_label")
    if isinstance(label, str) and label:
        return label
    count = entry.header.parameter_count or 0
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return None


def _quantization(entry: CatalogEntry) -> dict[str, Any] | None:
    name = entry.quantization
    bits = _BITS.search(name or "")
    return {"name": name, "bits": int(bits.group(1))} if name and bits else None


def model_info(
    entry: CatalogEntry, key: str, domain: Domain | None = None, vision: bool | None = None
) -> dict[str, Any]:
    """A downloaded model: ``LlmInfo`` or ``EmbeddingModelInfo`` (``domain`` by default the
    file's own type; ``vision`` by default whether the catalog found a projector for it)."""
    header = entry.header
    kind = domain or ("embedding" if entry.model_type == "embeddings" else "llm")
    info: dict[str, Any] = {
        "type": kind,
        "modelKey": key,
        "format": "gguf",
        "displayName": str(header.metadata.get("general.name") or key),
        "path": entry.relative_path,
        "sizeBytes": entry.size_bytes,
        "paramsString": _params_string(entry),
        "architecture": header.architecture,
        "quantization": _quantization(entry),
        "maxContextLength": int(header.context_length or 0),
    }
    if kind == "llm":
        info["vision"] = entry.vision if vision is None else vision
        info["trainedForToolUse"] = "tools" in (header.chat_template or "")
    return {name: value for name, value in info.items() if value is not None}


def model_key(models: ModelManager, entry: CatalogEntry) -> str:
    """The key the catalog shows for a file (an entry of an earlier scan included)."""
    current = models.catalog.resolve(entry.relative_path)
    return models.catalog.public_id(current) if current is not None else entry.lmstudio_key


def instance_info(models: ModelManager, model: LoadedModel, domain: Domain) -> dict[str, Any]:
    """A loaded instance: ``LlmInstanceInfo`` or ``EmbeddingModelInstanceInfo``."""
    return {
        **model_info(model.entry, model_key(models, model.entry), domain, model.vision),
        "identifier": model.identifier,
        "instanceReference": model.identifier,
        "contextLength": model.n_ctx,
    }


def loaded_in(models: ModelManager, domain: Domain) -> list[LoadedModel]:
    """The loaded models a namespace lists: its own type only, as LM Studio lists them."""
    wanted = "embeddings" if domain == "embedding" else "llm"
    return [model for model in models.loaded() if model.entry.model_type == wanted]


def loaded_names(models: ModelManager) -> list[str]:
    return [model.identifier for model in models.loaded()]


def wanted_name(specifier: ModelSpecifier, models: ModelManager, domain: Domain) -> str:
    """The model name a specifier gives, for the model manager to find (and load just in
    time): an instance reference or query identifier as it is, a path as the catalog reads
    it; an empty query (``client.llm.model()``) names none, so the one loaded model of the
    namespace, as a REST request without ``model`` gets (``ModelManager.sole_model``)."""
    if isinstance(specifier, InstanceSpecifier):
        return specifier.instanceReference
    query = specifier.query
    asked = query.model_dump(exclude_none=True)
    if query.domain is not None and query.domain != domain:
        raise no_model_matching(asked, loaded_names(models))
    name = query.identifier or query.path
    if query.vision:
        return _seeing(name, asked, models, domain)
    if name is not None:
        return name
    try:
        return models.sole_model("embeddings" if domain == "embedding" else "llm")
    except NoModelNamed as exc:
        raise no_model_matching(asked, exc.loaded, title=str(exc)) from None


def _seeing(name: str | None, asked: dict[str, Any], models: ModelManager, domain: Domain) -> str:
    """The model a query with ``vision: true`` names: ``name`` if it sees (a name no model has
    goes on to the usual not-found error), else the one loaded model of the namespace that
    sees."""
    if name is not None:
        found = models.find_loaded(name) or models.resolve_entry(name)
        if found is None or found.vision:
            return name
    else:
        seeing = [model.identifier for model in loaded_in(models, domain) if model.vision]
        if len(seeing) == 1:
            return seeing[0]
    raise no_model_matching(asked, loaded_names(models))


def find_instance(
    specifier: ModelSpecifier, models: ModelManager, domain: Domain
) -> LoadedModel | None:
    """The loaded instance a specifier names, if one is loaded (nothing is loaded here)."""
    return models.find_loaded(wanted_name(specifier, models, domain))
