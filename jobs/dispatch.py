"""Queueing a cohort's generation work in chunks, so that a 100,000-subject cohort neither blocks its POST nor
fills the broker with 25,000 messages that a cancel would have to drain.

The API queues the first :data:`DISPATCH_CHUNK_BATCHES` batches and, when more remain, one
:class:`~jobs.contract.DispatchJob` behind them. The broker's queue is first in, first out, so a generation
worker takes the continuation only once that chunk has been taken; it queues the next chunk and the next
continuation, unless the cohort was canceled, failed or deleted meanwhile. The queue thus holds at most about one
chunk of each cohort: a cancel stops the rest at once, and cohorts submitted later interleave with a huge one.
A continuation delivered twice (a killed worker) queues its chunk twice; the generation tasks are idempotent
(stored subjects are never rewritten), so that costs a chunk of no-op deliveries, never a second brain.
"""

from __future__ import annotations

from collections.abc import Collection

from celery import Celery

from jobs.contract import DISPATCH_BATCHES, GENERATE_SUBJECTS, DispatchJob, SubjectBatch
from jobs.state import FINAL, CohortState, StoredCohort

#: Batches queued per chunk (2,000 subjects at 4 a task): enough to keep many GPU workers busy while the next
#: continuation waits its turn, few enough that one POST queues them in well under a second.
DISPATCH_CHUNK_BATCHES = 500


def dispatch_chunk(
    celery: Celery,
    stored: StoredCohort,
    start: int = 0,
    done: Collection[str] = (),
    chunk: int = DISPATCH_CHUNK_BATCHES,
) -> int:
    """Queue the cohort's batches ``start`` to ``start + chunk`` (those with a subject not in ``done``), then
    the continuation for the rest, if any; returns how many generation tasks were queued."""
    batches = stored.batches()
    queued = 0
    for subjects in batches[start : start + chunk]:
        if any(job.participant_id not in done for job in subjects):
            celery.send_task(GENERATE_SUBJECTS, args=[SubjectBatch(subjects=subjects).model_dump()])
            queued += 1
    if start + chunk < len(batches):
        following = DispatchJob(tenant=stored.tenant, cohort_id=stored.id, start=start + chunk)
        celery.send_task(DISPATCH_BATCHES, args=[following.model_dump()])
    return queued


def continue_dispatch(celery: Celery, state: CohortState, stored: StoredCohort, job: DispatchJob) -> int:
    """The continuation's work: the next chunk of a cohort still queued or running (nothing for a canceled,
    failed or deleted one); subjects already stored are skipped. Returns the generation tasks queued."""
    record = state.get(job.cohort_id)
    if record is None or record.tenant != job.tenant or record.status in FINAL:
        return 0
    chunk = stored.batches()[job.start : job.start + DISPATCH_CHUNK_BATCHES]
    done = state.done_among(job.cohort_id, [subject.participant_id for batch in chunk for subject in batch])
    return dispatch_chunk(celery, stored, job.start, done)
