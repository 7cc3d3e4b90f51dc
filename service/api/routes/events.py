"""``/v1/cohorts/{cohort_id}/events``: a cohort's status as Server-Sent Events until it is final."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from jobs.state import FINAL
from service.api.deps import CohortServiceDep, Reader
from service.cohorts import CohortService
from service.openapi import STREAM_RESPONSES

router = APIRouter(prefix="/v1/cohorts", tags=["cohorts"])
#: How often the stream reads the cohort, and the longest silence before a keep-alive comment.
POLL_S, KEEP_ALIVE_S = 0.5, 15.0


async def status_events(cohorts: CohortService, cohort_id: str) -> AsyncIterator[str]:
    """A ``status`` event whenever the cohort's status body changes, keep-alives between, until it is final
    (or an ``error`` event if it is deleted meanwhile)."""
    last, last_sent = None, time.monotonic()
    while True:
        record = await run_in_threadpool(cohorts.state.get, cohort_id)
        if record is None:
            yield 'event: error\ndata: {"detail": "cohort no longer exists"}\n\n'
            return
        body = (await run_in_threadpool(cohorts.status, record)).model_dump_json()
        if body != last:
            yield f"event: status\ndata: {body}\n\n"
            last, last_sent = body, time.monotonic()
        elif time.monotonic() - last_sent > KEEP_ALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if record.status in FINAL:
            return
        await asyncio.sleep(POLL_S)


@router.get("/{cohort_id}/events", responses=STREAM_RESPONSES)
async def events(cohort_id: str, tenant: Reader, cohorts: CohortServiceDep) -> StreamingResponse:
    """Server-Sent Events: a ``status`` event on every change, until a final state."""
    await run_in_threadpool(cohorts.load, tenant, cohort_id)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(status_events(cohorts, cohort_id), media_type="text/event-stream", headers=headers)
