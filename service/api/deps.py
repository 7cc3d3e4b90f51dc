"""The routes' dependencies as typed ``Annotated`` aliases: settings, the cohort service, the readiness prober,
the metrics, the caller's tenant (API key) and a cohort's reader (API key or link token).

Each reads what :func:`service.app.create_app` put on ``app.state``, so a test swaps any of them with
``app.dependency_overrides`` (for example :func:`get_cohort_service` with a service of its own).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.cohorts import CohortService
from service.errors import NotAuthenticated
from service.links import LINK_TOKEN_TTL_S
from service.metrics import ApiMetrics
from service.readiness import Readiness
from service.settings import ServiceSettings

_bearer = HTTPBearer(auto_error=False)
#: The ``Authorization: Bearer`` credentials, if any were sent.
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_settings(request: Request) -> ServiceSettings:
    """The settings the app was made with."""
    return request.app.state.settings


def get_cohort_service(request: Request) -> CohortService:
    """The app's cohort service (its Redis, object storage and Celery connections)."""
    return request.app.state.cohorts


def get_readiness(request: Request) -> Readiness:
    """The app's readiness prober."""
    return request.app.state.readiness


def get_metrics(request: Request) -> ApiMetrics:
    """The app's Prometheus metrics."""
    return request.app.state.metrics


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
CohortServiceDep = Annotated[CohortService, Depends(get_cohort_service)]
ReadinessDep = Annotated[Readiness, Depends(get_readiness)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


def tenant_of(request: Request, settings: SettingsDep, credentials: Credentials) -> str:
    """The tenant whose API key the caller sent (401 otherwise)."""
    tenant = settings.tenant_for(credentials.credentials) if credentials else None
    if tenant is None:
        raise NotAuthenticated("missing or unknown API key: send Authorization: Bearer <key>")
    request.scope["brainsynth.tenant"] = tenant  # for the request log line (the name, never the key)
    return tenant


def reader_of(
    cohort_id: str,
    request: Request,
    settings: SettingsDep,
    cohorts: CohortServiceDep,
    credentials: Credentials,
    token: Annotated[
        str | None,
        Query(
            max_length=1024,
            description="a link token from POST /v1/cohorts/{cohort_id}/link-token, for "
            "clients that cannot send headers (EventSource, <img>, download links)",
        ),
    ] = None,
) -> str:
    """The tenant of the API key sent, or of a valid link token for this cohort (401 otherwise)."""
    tenant = settings.tenant_for(credentials.credentials) if credentials else None
    if tenant is None and token:
        tenant = cohorts.links.check(token, cohort_id)
    if tenant is None:
        raise NotAuthenticated(
            "missing or unknown API key or link token: send Authorization: Bearer <key>, or ?token= from "
            f"POST /v1/cohorts/{cohort_id}/link-token (valid {LINK_TOKEN_TTL_S} s)"
        )
    request.scope["brainsynth.tenant"] = tenant
    return tenant


#: The caller's tenant, from its API key.
Tenant = Annotated[str, Depends(tenant_of)]
#: A cohort's read-only streams (events, previews, archive): API key, or a link token for that cohort.
Reader = Annotated[str, Depends(reader_of)]
