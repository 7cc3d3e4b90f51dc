"""The API's domain errors and the one place that maps them, and the dependencies' failures, to HTTP answers.

The cohort service (:mod:`service.cohorts`) and the dependencies raise these; :func:`install_error_handlers`
turns each into its status code and the body every client sees: ``{"detail": "..."}``, or for a 422 the list
FastAPI itself answers with (``[{"loc": [...], "msg": ..., "type": ...}]``).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from jobs.storage import StorageError
from models.errors import BrainSynthError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the API answers with an error; ``detail`` is the body's ``detail``."""

    def __init__(self, detail: str | list[dict[str, Any]], headers: dict[str, str] | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail
        self.headers = headers


class NotAuthenticated(ServiceError):
    """No API key (or link token) that this server knows."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    """Nothing at this path for this tenant."""


class CohortNotFound(NotFound):
    """No such cohort for this tenant (another tenant's reads the same)."""

    def __init__(self, cohort_id: str) -> None:
        super().__init__(f"cohort {cohort_id} not found")


class CohortConflict(ServiceError):
    """The cohort is not in a state for this (the message says which)."""

    def __init__(self, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None)


class InvalidRequest(ServiceError):
    """Fields of the request are invalid; each entry's ``loc`` names one."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)


class InvalidField(InvalidRequest):
    """One invalid field, in FastAPI's own shape."""

    def __init__(self, loc: list[str | int], message: str) -> None:
        super().__init__([{"loc": loc, "msg": message, "type": "value_error"}])


class ActiveLimitReached(ServiceError):
    """The tenant has as many cohorts queued or running as it may."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"Retry-After": "30"})


class BodyTooLarge(ServiceError):
    """The request body is over the server's limit."""


class UnsupportedMediaType(ServiceError):
    """The request body is not UTF-8 JSON."""


#: Each domain error's status code (a subclass takes its parent's unless listed).
STATUS_CODES: dict[type[ServiceError], int] = {
    NotAuthenticated: 401,
    NotFound: 404,
    CohortConflict: 409,
    BodyTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidRequest: 422,
    ActiveLimitReached: 429,
}
#: What a client reads when a dependency of the API is down (with ``Retry-After: 5``).
UNAVAILABLE = {
    redis.RedisError: "the job store (Redis) is unavailable: retry shortly",
    StorageError: "object storage is unavailable: retry shortly",
}


def status_code(err: ServiceError) -> int:
    """The HTTP status of ``err`` (by the nearest class in :data:`STATUS_CODES`)."""
    return next(STATUS_CODES[cls] for cls in type(err).__mro__ if cls in STATUS_CODES)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, model-layer errors and unavailable dependencies to their answers on ``app``."""

    async def service_error(_request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, ServiceError)
        return JSONResponse({"detail": err.detail}, status_code=status_code(err), headers=err.headers)

    async def model_error(_request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    async def unavailable(_request: Request, err: Exception) -> JSONResponse:
        detail = next(text for kind, text in UNAVAILABLE.items() if isinstance(err, kind))
        log.warning("%s (%s)", detail, err)
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(BrainSynthError, model_error)
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, unavailable)
