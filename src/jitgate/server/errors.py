"""Every error the API answers, in one shape: ``{"error": {"code", "message"}}``.

* :class:`~jitgate.service.ServiceError` (the service's refusals) keeps its
  status and code;
* :class:`ApiError` is the server's own refusals (authentication, limits);
* request validation: malformed JSON is ``400 invalid_json``, a body that does
  not fit its model ``400 invalid_body``, a bad query or path parameter
  ``400 invalid_query``; the message names the field
  (``body.comment: input should be a valid string``) but never echoes the
  value, which may be a secret;
* Starlette's HTTP errors: ``404 not_found``, ``405 method_not_allowed``
  (with ``Allow``), ``413 payload_too_large``...;
* anything else is ``500 internal_error``, logged with its traceback on the
  server and answered without one (:class:`CatchAllMiddleware`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jitgate.service import ServiceError

logger = logging.getLogger("jitgate.server")

#: The code of a Starlette HTTP error, by status.
STATUS_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}

#: How many validation errors one message lists before "and N more".
MAX_LISTED_ERRORS = 5


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class ApiError(Exception):
    """A refusal by the HTTP layer itself (not the service)."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class PayloadTooLarge(StarletteHTTPException):
    """Raised while a request body is read, once it passes the limit.

    An ``HTTPException`` so that FastAPI's body reader lets it through as is
    (it turns other exceptions into a generic 400).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def unauthenticated(message: str = "missing or invalid bearer token") -> ApiError:
    return ApiError(401, "unauthenticated", message, {"WWW-Authenticate": "Bearer"})


# --- validation messages ------------------------------------------------------------


def _loc(loc: Sequence[Any]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    if (
        kind == "model_attributes_type"
        and loc == ("body",)
        and isinstance(error.get("input"), bytes | bytearray)
    ):
        return "body: expected a JSON object (send Content-Type: application/json)"
    if kind == "missing" and loc == ("body",):
        return "body: a JSON object is required"
    message = _lower_first(str(error.get("msg", "invalid value")))
    return f"{_loc(loc)}: {message}" if loc else message


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    for error in errors:
        if error.get("type") == "json_invalid":
            ctx = error.get("ctx") or {}
            loc = tuple(error.get("loc", ()))
            where = f" at position {loc[1]}" if len(loc) > 1 else ""
            detail = f": {ctx['error']}" if ctx.get("error") else ""
            return error_response(400, "invalid_json", f"malformed JSON body{detail}{where}")
    in_body = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors)
    code = "invalid_body" if in_body or not errors else "invalid_query"
    messages = [_describe(e) for e in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        messages.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    return error_response(400, code, "; ".join(messages) or "invalid request")


# --- handlers -------------------------------------------------------------------------


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.code, exc.message)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = STATUS_CODES.get(status, "http_error")
    if status == 404:
        message = "not found"
    elif status == 405:
        message = f"method {request.method} not allowed here"
    elif isinstance(exc.detail, str) and exc.detail:
        message = exc.detail
    else:
        message = code.replace("_", " ")
    return error_response(status, code, message, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class CatchAllMiddleware:
    """Answer ``500 internal_error`` for any exception that escapes the app.

    The traceback goes to the server log, never into the answer. If the
    response had already started (a stream), nothing more can be sent: the
    connection is closed by the server when the app returns.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception(
                "unhandled error on %s %s", scope.get("method", "?"), scope.get("path", "?")
            )
            if started:
                return
            response = error_response(500, "internal_error", "internal server error")
            await response(scope, receive, send)
