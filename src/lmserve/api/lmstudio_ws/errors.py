"""Errors in the SDKs' shape: ``{"title", "cause", "suggestion", "displayData", "errorData"}``.

Both SDKs turn ``displayData.code`` into their own error classes (``generic.noModelMatchingQuery``
becomes the Python SDK's ``LMStudioModelNotFoundError``), and the JavaScript SDK drops a
``displayData`` that lacks a field its code requires, so each code carries all of them.  Every
other error is the one the REST API would give (:func:`api_error_for`), its title the
message and its OpenAI type and code in ``errorData``.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from lmserve.api.common.errors import MAX_MESSAGE_LENGTH, api_error_for, validation_error
from lmserve.models.errors import ModelNotFound

logger = logging.getLogger("lmserve.api")

_SAMPLE = 10  # loaded models named in a not-found error


class SDKError(Exception):
    """An error that already has the SDK's shape."""

    def __init__(self, title: str, display: dict[str, Any] | None = None, **extra: str) -> None:
        super().__init__(title)
        self.title = title
        self.display = display
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"title": _capped(self.title), **self.extra}
        if self.display is not None:
            body["displayData"] = self.display
        return body


def _capped(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_LENGTH else text[: MAX_MESSAGE_LENGTH - 1] + "…"


def no_model_matching(
    query: dict[str, Any], loaded: list[str], what: str | None = None, title: str | None = None
) -> SDKError:
    """``generic.noModelMatchingQuery``: nothing loaded or downloaded answers to ``query``
    (``title`` says why, when it is more than that)."""
    what = what or ", ".join(f"{key} {value!r}" for key, value in query.items()) or "any model"
    return SDKError(
        title or f"No model matches the query ({what}).",
        {
            "code": "generic.noModelMatchingQuery",
            "query": query,
            "loadedModelsSample": loaded[:_SAMPLE],
            "totalLoadedModels": len(loaded),
        },
        suggestion="List the models with 'lmserve ls' (downloaded) or 'lmserve ps' (loaded).",
    )


def preset_not_found(preset: str) -> SDKError:
    """``generic.presetNotFound``: lmserve keeps no presets, so none matches."""
    return SDKError(
        f"No preset matches {preset!r}: lmserve has no presets.",
        {
            "code": "generic.presetNotFound",
            "specifiedFuzzyPresetIdentifier": preset,
            "availablePresetsSample": [],
            "totalAvailablePresets": 0,
        },
        suggestion="Send the settings in the prediction's config instead.",
    )


def unsupported(what: str) -> SDKError:
    return SDKError(f"{what} is not supported by lmserve.")


def invalid(what: str, exc: ValidationError) -> SDKError:
    """A parameter that does not match the endpoint's schema, named as the wire names it."""
    return SDKError(f"Invalid {what}. {validation_error(exc).message}")


def error_body(exc: BaseException) -> dict[str, Any]:
    """The SDK-shaped error for anything a handler raised."""
    if isinstance(exc, SDKError):
        return exc.body()
    if isinstance(exc, ModelNotFound):
        query = {"identifier": exc.name}
        return no_model_matching(query, exc.known, repr(exc.name), title=exc.note).body()
    if not isinstance(exc, Exception):
        return SDKError("The request was cancelled.").body()
    mapped = api_error_for(exc)
    if mapped.status_code == 500 and mapped.code is None:
        logger.error("error in a WebSocket handler", exc_info=exc)
    body = SDKError(mapped.message).body()
    details = (("type", mapped.error_type), ("code", mapped.code), ("param", mapped.param))
    body["errorData"] = {key: value for key, value in details if value is not None}
    return body
