"""Errors in OpenAI's shape, and the one place that maps exceptions to responses.

Every error the API returns has the body ``{"error": {"message", "type", "param", "code"}}``.
Hierarchy (each class fixes the HTTP status and the ``type``):

- :class:`APIError` (500, ``server_error``): base of all errors the API reports on purpose
  - :class:`InvalidRequestError` (400, ``invalid_request_error``): the request is malformed
    - :class:`ContextLengthExceededError` (code ``context_length_exceeded``)
    - :class:`PayloadTooLargeError` (413, code ``request_too_large``)
  - :class:`AuthenticationError` (401, ``authentication_error``): no valid API key
  - :class:`PermissionDeniedError` (403, ``permission_error``): e.g. a foreign ``Host``
  - :class:`NotFoundError` (404, ``invalid_request_error``): unknown route or resource
    - :class:`ModelNotFoundError` (code ``model_not_found``)
  - :class:`FailedDependencyError` (424, ``external_connector_error``): an MCP server or a
    plugin a request names cannot be reached or used
  - :class:`BadGatewayError` (502, ``server_error``): the Hugging Face hub failed
  - :class:`ServiceUnavailableError` (503, ``server_error``): overloaded or shutting down
  - :class:`GenerationFailed`, :class:`EngineCrashed` (500): a generation ended in error

Anything else that escapes a route is a bug: it becomes a 500 whose body says nothing about
the server's internals (no traceback, no file path); the details go to the server's log.
Messages are capped (:data:`MAX_MESSAGE_LENGTH`), so an error never echoes a huge input back.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmserve.engine.template import TemplateRenderError
from lmserve.engine.types import (
    EngineClosedError,
    EngineCrashedError,
    EngineError,
    GrammarError,
    ImageError,
    QueueFullError,
)
from lmserve.models.errors import (
    DraftModelRefused,
    ModelCapacityError,
    ModelCrashedError,
    ModelLoadFailed,
    ModelNotFound,
    NoModelNamed,
)
from lmserve.models.hub import QuantizationNotFound
from lmserve.models.references import DownloadError, InvalidModelReference
from lmserve.plugins.errors import PluginNotFound
from lmserve.toolsource import ToolSourceError

logger = logging.getLogger("lmserve.api")


class APIError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"

    def __init__(self, message: str, *, param: str | None = None, prompt_tokens: int = 0) -> None:
        super().__init__(message, param=param)
        self.prompt_tokens = prompt_tokens  # the longest prompt, to load a context that fits


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    default_code = "request_too_large"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(APIError):
    status_code = 403
    error_type = "permission_error"
    default_code = "forbidden"


class NotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class BadGatewayError(APIError):
    """An upstream service (the Hugging Face hub) failed or refused (502, ``server_error``)."""

    status_code = 502


class FailedDependencyError(APIError):
    """A server the request depends on (an MCP server) could not be used: 424, as OpenAI
    answers when it cannot list an MCP server's tools."""

    status_code = 424
    error_type = "external_connector_error"
    default_code = "mcp_server_unavailable"


class ServiceUnavailableError(APIError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"


class GenerationFailed(APIError):
    """The engine could not finish the request (500, ``server_error``)."""


class EngineCrashed(APIError):
    """The model's engine process died while generating (500, ``engine_crashed``)."""

    default_code = "engine_crashed"


MAX_MESSAGE_LENGTH = 1000
_MAX_PARAM_LENGTH = 200


def _capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    # Messages quote names the client sent (models, job ids); keep the echo small.
    message = _capped(message, MAX_MESSAGE_LENGTH)
    param = _capped(param, _MAX_PARAM_LENGTH) if param is not None else None
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


# Pydantic puts the name of the union member it tried (``str``, ``list[str]``) into an error's
# location; OpenAI's ``param`` names only fields and indexes.
_UNION_MEMBER_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_union_member(part: Any) -> bool:
    # "union:..." is how our tagged unions name their members (e.g. Responses' tools).
    return isinstance(part, str) and (
        "[" in part or part in _UNION_MEMBER_NAMES or part.startswith("union:")
    )


_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def _param_name(loc: tuple[Any, ...]) -> str | None:
    """``("body", "messages", 0, "role")`` → ``messages[0].role``, as OpenAI names params."""
    name = ""
    for index, part in enumerate(loc):
        # FastAPI says where a value came from first; OpenAI names the parameter alone.
        if (index == 0 and part in _LOCATIONS) or part == "body" or _is_union_member(part):
            continue
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or None


def validation_error(exc: RequestValidationError | ValidationError) -> InvalidRequestError:
    """Turn FastAPI's 422 into OpenAI's 400 with one readable message.

    Also takes pydantic's own error, from a request a route builds out of another (Anthropic,
    Responses and LM Studio's chat become chat completions): chat's bounds named as chat's.
    """
    errors = exc.errors()
    if not errors:
        return InvalidRequestError("The request body is not valid.")
    first = errors[0]
    kind = first.get("type", "")
    loc = tuple(first.get("loc", ()))
    if kind == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            code="invalid_json",
        )
    if loc == ("body",) and kind in {"model_attributes_type", "dict_type", "model_type"}:
        return InvalidRequestError("The request body must be a JSON object.", code="invalid_type")
    param = _param_name(loc)
    if kind == "missing":
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    # Our validators' own words, without pydantic's "Value error, " before them.
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    given = first.get("input")
    shown = ""
    if given is not None and not isinstance(given, dict | list):
        text = json.dumps(given) if not isinstance(given, str) else repr(given)
        shown = f" (got {text[:80]})"
    return InvalidRequestError(
        f"Invalid value for '{param}': {message}{shown}.", param=param, code="invalid_value"
    )


def _sentence(text: str) -> str:
    """``text`` as a sentence: a capital first letter (the rest as it is) and a full stop."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def api_error_for(exc: Exception) -> APIError:
    """The one mapping from the exceptions of every layer to the API's errors."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestValidationError):
        return validation_error(exc)
    if isinstance(exc, UnicodeError):
        # JSON may spell a lone UTF-16 surrogate ("\ud800"); no model can read it as text.
        return InvalidRequestError(
            "The request holds text that is not valid Unicode (a lone surrogate escape such "
            "as \\ud800).",
            code="invalid_unicode",
        )
    if isinstance(exc, ModelNotFound):
        known = ", ".join(exc.known) if exc.known else "none"
        why = exc.note or f"The model '{exc.name}' does not exist or is not loaded."
        return ModelNotFoundError(f"{why} Available: {known}.", param="model")
    if isinstance(exc, NoModelNamed):
        # The loaded models are named: one of them is what the request should say.
        return InvalidRequestError(str(exc), param="model", code="missing_required_parameter")
    if isinstance(exc, DraftModelRefused):
        return InvalidRequestError(str(exc), param="draft_model", code=exc.code)
    if isinstance(exc, GrammarError):
        return InvalidRequestError(
            f"The output constraint could not be compiled into a grammar: {exc}.",
            code="unsupported_schema",
        )
    if isinstance(exc, TemplateRenderError):
        return InvalidRequestError(str(exc), param="messages", code="invalid_messages")
    if isinstance(exc, ImageError):
        return InvalidRequestError(
            f"The image could not be read by the model: {exc}.",
            param="messages",
            code="invalid_image",
        )
    if isinstance(exc, PluginNotFound):
        return InvalidRequestError(str(exc), code="plugin_not_found")
    if isinstance(exc, ToolSourceError):  # an MCP server, a plugin
        return FailedDependencyError(_sentence(str(exc)))
    if isinstance(exc, QueueFullError):
        return ServiceUnavailableError(
            f"The server is busy ({exc}). Try again shortly.",
            code="queue_full",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, EngineCrashedError):
        return APIError(_sentence(str(exc)), code="engine_crashed")
    if isinstance(exc, ModelCrashedError):
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return ServiceUnavailableError(_sentence(str(exc)), code="model_crashed", headers=retry)
    if isinstance(exc, EngineClosedError):
        return ServiceUnavailableError(
            "The model is being unloaded or the server is shutting down.", code="unavailable"
        )
    if isinstance(exc, ModelCapacityError):
        return ServiceUnavailableError(
            _sentence(str(exc)), code="model_capacity", headers={"Retry-After": "5"}
        )
    if isinstance(exc, InvalidModelReference | QuantizationNotFound):
        return InvalidRequestError(str(exc), param="model", code="invalid_model_reference")
    if isinstance(exc, DownloadError):
        return BadGatewayError(str(exc), code="download_failed")
    if isinstance(exc, ModelLoadFailed):
        return APIError(_sentence(str(exc)), code="model_load_failed")
    if isinstance(exc, EngineError):
        return APIError(f"The engine failed: {exc}.", code="engine_error")
    logger.error("unmapped error %r", exc)
    return APIError("The server had an error while processing your request.")


_MAPPED = (
    APIError,
    DraftModelRefused,
    RequestValidationError,
    UnicodeError,
    ModelNotFound,
    NoModelNamed,
    TemplateRenderError,
    GrammarError,
    ImageError,
    QueueFullError,
    EngineClosedError,
    EngineError,
    ModelCapacityError,
    ModelCrashedError,
    ModelLoadFailed,
    DownloadError,
    ToolSourceError,
)


def error_response(exc: Exception) -> JSONResponse:
    error = api_error_for(exc)
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


_HTTP_ERROR_TYPES = {401: "authentication_error", 403: "permission_error"}


def install_error_handlers(app: FastAPI) -> None:
    """Register the exception → response mapping on ``app``."""

    async def _mapped(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    for exc_type in _MAPPED:
        app.add_exception_handler(exc_type, _mapped)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code >= 500:
            error_type = "server_error"
        else:
            error_type = _HTTP_ERROR_TYPES.get(exc.status_code, "invalid_request_error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404:
            message = "Unknown request URL. Check the path and the HTTP method."
        return JSONResponse(
            error_body(message, error_type, None, None),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("The server had an error while processing your request.", "server_error"),
            status_code=500,
        )
