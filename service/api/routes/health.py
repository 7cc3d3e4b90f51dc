"""``/healthz`` (alive) and ``/readyz`` (Redis, object storage and a worker answer)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from service.api.deps import ReadinessDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive (no dependencies checked; answered on the event loop, never queued behind other work)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(
    readiness: ReadinessDep,
    workers: Annotated[
        Literal["required", "optional"],
        Query(description="optional: ready without a live worker (an orchestrator that scales workers to zero)"),
    ] = "required",
) -> JSONResponse:
    """Ready: Redis and object storage answer and a worker beat in the last 10 s (probed each second)."""
    report = readiness.report(workers_required=workers == "required")
    return JSONResponse(report, status_code=200 if report["ready"] else 503)
