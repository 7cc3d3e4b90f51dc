"""``/v1/cohorts``: submit, list, read, cancel and delete cohorts, list their subjects, issue link tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.api.deps import CohortServiceDep, SettingsDep, Tenant
from service.errors import BodyTooLarge, UnsupportedMediaType
from service.links import LINK_TOKEN_TTL_S
from service.openapi import CONFLICT_RESPONSES, ERROR_RESPONSES, SUBMIT_RESPONSES
from service.schemas import CohortPage, CohortStatus, LinkTokenOut, SubjectPage

router = APIRouter(prefix="/v1/cohorts", tags=["cohorts"])


def _require_json(request: Request) -> None:
    """415 unless the body is declared UTF-8 JSON."""
    media_type, _, parameters = (request.headers.get("content-type") or "").partition(";")
    charset = parameters.strip().lower().removeprefix("charset=").strip('"') if parameters.strip() else "utf-8"
    if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("send the cohort request as JSON with Content-Type: application/json (UTF-8)")


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is declared or read past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"request body is over {limit} bytes")
    return bytes(body)


@router.post("", status_code=202, response_model=CohortStatus, responses=SUBMIT_RESPONSES)
async def submit(
    request: Request,
    response: Response,
    tenant: Tenant,
    settings: SettingsDep,
    cohorts: CohortServiceDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> CohortStatus:
    """Queue a cohort (body: CohortRequest). 202 with Location; 422 names the invalid field."""
    _require_json(request)
    raw = await _read_body(request, settings.max_body_bytes)
    record, _created = await run_in_threadpool(cohorts.submit, tenant, raw, idempotency_key)
    response.headers["Location"] = f"/v1/cohorts/{record.id}"
    response.headers["Retry-After"] = "2"
    return await run_in_threadpool(cohorts.status, record)


@router.get(
    "",
    response_model=CohortPage,
    responses={401: ERROR_RESPONSES[401], 422: SUBMIT_RESPONSES[422], 503: ERROR_RESPONSES[503]},
)
def list_cohorts(
    tenant: Tenant,
    cohorts: CohortServiceDep,
    page_size: Annotated[int, Query(ge=1)] = 20,
    page_token: str | None = None,
) -> CohortPage:
    """The caller's cohorts, newest first."""
    return cohorts.list_page(tenant, page_size, page_token)


@router.get("/{cohort_id}", response_model=CohortStatus, responses=ERROR_RESPONSES)
def get_cohort(cohort_id: str, tenant: Tenant, cohorts: CohortServiceDep) -> CohortStatus:
    return cohorts.status(cohorts.load(tenant, cohort_id))


@router.get("/{cohort_id}/subjects", response_model=SubjectPage, responses=ERROR_RESPONSES)
def subjects(
    cohort_id: str,
    tenant: Tenant,
    cohorts: CohortServiceDep,
    page_size: Annotated[int, Query(ge=1)] = 100,
    page_token: str | None = None,
) -> SubjectPage:
    """Per-subject covariates, seed, status and short-lived presigned URLs of stored files, a page at a time
    in participant order (``next_page_token`` as in the cohort list)."""
    return cohorts.subjects(cohorts.load(tenant, cohort_id), page_size, page_token)


@router.post("/{cohort_id}/link-token", response_model=LinkTokenOut, responses=ERROR_RESPONSES)
def link_token(cohort_id: str, tenant: Tenant, cohorts: CohortServiceDep) -> LinkTokenOut:
    """A token, valid 10 minutes, that opens this cohort's events, previews and archive as ?token=
    (for browsers: EventSource and <img> cannot send the API key, which must never go in a URL)."""
    record = cohorts.load(tenant, cohort_id)
    token, issued = cohorts.links.issue(tenant, record.id)
    expires = datetime.fromtimestamp(issued.expires_at, UTC).isoformat().replace("+00:00", "Z")
    return LinkTokenOut(token=token, cohort_id=record.id, expires_at=expires, expires_in_s=LINK_TOKEN_TTL_S)


@router.post("/{cohort_id}/cancel", response_model=CohortStatus, responses=CONFLICT_RESPONSES)
def cancel(cohort_id: str, tenant: Tenant, cohorts: CohortServiceDep) -> CohortStatus:
    """Queued subjects are not run; finished ones stay; the status becomes canceled."""
    return cohorts.status(cohorts.cancel(cohorts.load(tenant, cohort_id)))


@router.delete("/{cohort_id}", status_code=204, responses=CONFLICT_RESPONSES)
def delete(cohort_id: str, tenant: Tenant, cohorts: CohortServiceDep) -> Response:
    """Remove a finished or canceled cohort and all its objects."""
    cohorts.delete(cohorts.load(tenant, cohort_id))
    return Response(status_code=204)
