"""A cohort's files: the BIDS archive (``/archive``) and each stored subject's PNG previews."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from models.dataset.bids import QC_REPORT, QC_SCATTER
from service.api.deps import CohortServiceDep, Reader, SettingsDep
from service.archive import parse_range
from service.cohorts import CohortService
from service.openapi import ARCHIVE_RESPONSES, ERROR_RESPONSES, RANGED_ARCHIVE_RESPONSES

router = APIRouter(prefix="/v1/cohorts", tags=["cohorts"])
#: The previews a worker renders per subject: (kind, file name in the URL, what it shows).
PREVIEW_ROUTES = (
    ("views", "preview.png", "axial, coronal and sagittal mid-slices side by side"),
    ("axial", "preview-axial.png", "the mid-axial slice alone (for a cohort strip)"),
    (
        "labels",
        "preview-labels.png",
        "the mid-slices with SAMSEG's brain (yellow) and ventricle (red) outlines "
        "(qc samseg cohorts, once the subject is measured)",
    ),
)
#: A stored subject never changes (ids are never reused): cached in the browser, not in shared caches.
PREVIEW_CACHE = "private, max-age=86400, immutable"


PartQuery = Annotated[int | None, Query(ge=1, description="which part (1-based) of `parts`; with `parts`")]
PartsQuery = Annotated[int | None, Query(ge=1, description="this many parts of whole subjects (at most one a subject)")]
RangeHeader = Annotated[str | None, Header(alias="Range", description="bytes=first-last, first- or -count")]
IfRangeHeader = Annotated[str | None, Header(alias="If-Range", description="the ETag the range belongs to")]


@router.get("/{cohort_id}/archive", responses=RANGED_ARCHIVE_RESPONSES)
def archive(
    request: Request,
    cohort_id: str,
    tenant: Reader,
    cohorts: CohortServiceDep,
    range_header: RangeHeader = None,
    if_range: IfRangeHeader = None,
    part: PartQuery = None,
    parts: PartsQuery = None,
) -> Response:
    """The cohort's BIDS dataset as a ZIP (ZIP64, stored), streamed from object storage, with its length, an
    ETag, and single byte ranges (206; 416 outside it) so an interrupted download resumes where it stopped;
    ``If-Range`` with another ETag (the cohort changed) gets the whole archive again. With ``?part=i&parts=k``,
    part i of k: every dataset-level file and a contiguous k-th of the subjects, whole; the k parts unzipped into
    one folder are the whole dataset (``sha256sum -c SHA256SUMS`` there; ``--ignore-missing`` for one part)."""
    return _archive(request, cohort_id, tenant, cohorts, range_header, if_range, part, parts)


@router.head("/{cohort_id}/archive", responses=RANGED_ARCHIVE_RESPONSES)
def archive_headers(
    request: Request,
    cohort_id: str,
    tenant: Reader,
    cohorts: CohortServiceDep,
    range_header: RangeHeader = None,
    if_range: IfRangeHeader = None,
    part: PartQuery = None,
    parts: PartsQuery = None,
) -> Response:
    """The archive's headers alone: its length, ETag and ``Accept-Ranges`` (what a download manager asks first)."""
    return _archive(request, cohort_id, tenant, cohorts, range_header, if_range, part, parts)


def _archive(
    request: Request, cohort_id: str, tenant: str, cohorts: CohortService, range_header: str | None,
    if_range: str | None, part: int | None, parts: int | None,
) -> Response:  # fmt: skip
    layout, etag = cohorts.archive(cohorts.load(tenant, cohort_id), part, parts)
    name = f"cohort-{cohort_id}" + (f"-part-{part}-of-{parts}" if part is not None else "") + ".zip"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Accept-Ranges": "bytes", "ETag": etag}
    try:
        wanted = parse_range(range_header, layout.size) if if_range in (None, etag) else None
    except ValueError:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{layout.size}"})
    start, stop = wanted or (0, layout.size)
    headers["Content-Length"] = str(stop - start)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{layout.size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/zip")
    body = layout.read(start, stop, cohorts.read_object)
    return StreamingResponse(body, status_code=status, media_type="application/zip", headers=headers)


@router.get(
    "/{cohort_id}/archive/manifest",
    response_class=StreamingResponse,
    responses={
        **ARCHIVE_RESPONSES,
        200: {"content": {"application/x-ndjson": {}}, "description": "one JSON object a line: path, size, url"},
    },
)
def archive_manifest(cohort_id: str, tenant: Reader, cohorts: CohortServiceDep, settings: SettingsDep) -> Response:
    """Every file of the finished cohort, one JSON object a line (``path`` in the dataset, ``size`` in bytes, a
    presigned ``url`` valid ``expires_in_s`` seconds), in the archive's order with ``SHA256SUMS`` last: for tools
    that copy object by object, in parallel (the URLs are signed as the lines stream)."""
    lines = cohorts.file_manifest(cohorts.load(tenant, cohort_id), settings.manifest_expiry_s)
    first = next(lines)  # errors (409 unfinished) surface before the 200 starts
    body = (json.dumps(item, separators=(",", ":")) + "\n" for item in itertools.chain([first], lines))
    return StreamingResponse(body, media_type="application/x-ndjson", headers={"Cache-Control": "no-store"})


@router.get(
    "/{cohort_id}/qc",
    responses={**ARCHIVE_RESPONSES, 200: {"description": "requested against measured volumes (qc_report.json)"}},
)
def qc_report(cohort_id: str, tenant: Reader, cohorts: CohortServiceDep) -> Response:
    """A finished cohort's QC report: subjects measured and passed, and per volume Pearson r, mean absolute
    error and percentage error of measured against requested (404 if it was not measured)."""
    report = cohorts.qc_file(cohorts.load(tenant, cohort_id), QC_REPORT)
    return Response(report, media_type="application/json", headers={"Cache-Control": "private, max-age=60"})


@router.get(
    "/{cohort_id}/qc.png",
    response_class=Response,
    responses={**ARCHIVE_RESPONSES, 200: {"content": {"image/png": {}}, "description": "PNG: measured vs requested"}},
)
def qc_scatter(cohort_id: str, tenant: Reader, cohorts: CohortServiceDep) -> Response:
    """A finished cohort's scatter plot of measured against requested volumes, with the tolerance band."""
    png = cohorts.qc_file(cohorts.load(tenant, cohort_id), QC_SCATTER)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


def _preview_route(kind: str) -> Callable[..., Response]:
    def preview(
        cohort_id: str,
        participant_id: str,
        tenant: Reader,
        cohorts: CohortServiceDep,
        if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    ) -> Response:
        found = cohorts.preview(cohorts.load(tenant, cohort_id), participant_id, kind)
        headers = {"ETag": found.etag, "Cache-Control": PREVIEW_CACHE}
        if if_none_match == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.png, media_type="image/png", headers=headers)

    return preview


for _kind, _suffix, _what in PREVIEW_ROUTES:
    router.add_api_route(
        f"/{{cohort_id}}/subjects/{{participant_id}}/{_suffix}",
        _preview_route(_kind),
        methods=["GET"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": f"PNG: {_what}"}, **ERROR_RESPONSES},
        summary=f"Preview of a stored subject: {_what}",
        description="Neurological convention (the subject's left on the left), labelled L/R, A/P, S/I, "
        "intensity window 0-1 for every subject. API key or link token. Cached privately (ETag; immutable).",
        name=f"preview_{_kind}",
    )
