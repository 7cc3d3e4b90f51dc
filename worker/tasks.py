"""Thin Celery tasks: parse the payload, keep the cohort's state, call :mod:`worker.runner`.

A task takes a small batch of one cohort's subjects and settles each of them in the cohort's state
(stored, not run, or failed); the task that settles the last subject queues the cohort's finalisation,
which writes the manifest last (in a SAMSEG cohort the measuring workers settle last: :mod:`worker.settling`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from jobs.contract import (
    DISPATCH_BATCHES,
    FINALIZE_COHORT,
    GENERATE_SUBJECTS,
    DispatchJob,
    FinalizeJob,
    SubjectBatch,
    SubjectResult,
)
from jobs.dispatch import continue_dispatch
from jobs.state import (
    FINAL,
    WORKERS_KEY,
    CohortRecord,
    Status,
    count_subjects,
    read_stored_cohort,
    recover_cohort,
    write_final_state,
)
from jobs.storage import StorageError, cohort_prefix
from models.catalogue.config import read_model_config
from models.catalogue.registry import resolve_model_dir
from models.errors import BrainSynthError
from worker import metrics
from worker.celery_app import app
from worker.config import get_settings
from worker.gpu import pipeline_for, probe_for
from worker.process import WorkerProcess, delivery_tag
from worker.runner import finalize_cohort, generate_subjects
from worker.settling import fail_cohort, settle_generated

log = logging.getLogger(__name__)

#: This generating worker process's store, state and heartbeat (in the generation workers' live set).
process = WorkerProcess(get_settings(), WORKERS_KEY)


class PoisonTaskError(RuntimeError):
    """A subject was delivered more often than allowed (it keeps killing its worker)."""


def _fail(record: CohortRecord, participants: list[str], reason: str, kind: str) -> None:
    metrics.FAILURES.labels(kind=kind).inc()
    count_subjects(process.state.redis, "failed", len(participants))
    log.warning(
        "subjects failed: %s", reason, extra={"cohort_id": record.id, "tenant": record.tenant,
                                              "subject_id": ",".join(participants), "failure": kind},
    )  # fmt: skip
    fail_cohort(process.state, process.store, record, f"{', '.join(participants)}: {reason}")
    settle_generated(app, process.state, record, participants)


@app.task(name=GENERATE_SUBJECTS, bind=True)
def generate_subjects_task(self: Task, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Generate a small batch of subjects of one cohort (idempotent: stored subjects are never rewritten)."""
    batch = SubjectBatch.model_validate(payload)
    first = batch.subjects[0]
    participants = [job.participant_id for job in batch.subjects]
    state, store = process.state, process.store
    record = state.get(first.cohort_id) or recover_cohort(state, store, first.tenant, first.cohort_id)
    not_run = [SubjectResult(participant_id=p, image_key="", outcome="not_run").model_dump() for p in participants]
    if record is None or record.tenant != first.tenant:
        log.info("cohort %s no longer exists: %s not run", first.cohort_id, ", ".join(participants))
        return not_run
    if record.status in FINAL:  # canceled, or failed by another subject: queued subjects are not run
        settle_generated(app, state, record, participants)
        return not_run
    delivery = first.participant_id if first.attempt == 1 else f"{first.participant_id}:attempt-{first.attempt}"
    attempts = state.count_attempt(first.cohort_id, delivery)
    limit = get_settings().max_attempts
    if attempts > limit:
        reason = f"delivered {attempts} times (limit {limit}): it keeps stopping its worker; giving up on it"
        _fail(record, participants, reason, "poison")
        raise PoisonTaskError(f"{', '.join(participants)} of cohort {first.cohort_id} was {reason}")
    if attempts > 1:
        metrics.REDELIVERIES.inc()
    state.transition(record, Status.RUNNING, allowed_from={Status.QUEUED})
    beat = process.heartbeat
    stop = beat.begin(first.cohort_id, delivery_tag(self))
    try:
        results = generate_subjects(
            batch, store, pipeline_for, get_settings().writer_threads, stop.is_set, measure_for=probe_for,
            records=process.records,
        )  # fmt: skip
    except BrainSynthError as err:  # the request cannot be served (model missing, bad weights): no retry
        _fail(record, participants, str(err), "model")
        raise
    except StorageError as err:  # storage stayed down past the retry budget: fail the cohort, naming why
        _fail(record, participants, f"object storage failed: {err}", "storage")
        raise
    finally:
        beat.end()
    for result in results:
        if result.outcome != "not_run":
            state.mark_done(record.id, result.participant_id)
    count_subjects(state.redis, "stored", sum(result.outcome == "stored" for result in results))
    if state.get(record.id) is None:  # deleted while this task ran: remove what it wrote after the delete
        store.delete_prefix(cohort_prefix(first.tenant, first.cohort_id))
        return [result.model_dump() for result in results]
    stored = {r.participant_id for r in results if r.outcome != "not_run"}
    settle_generated(app, state, record, participants, [job for job in batch.subjects if job.participant_id in stored])
    return [result.model_dump() for result in results]


@app.task(name=DISPATCH_BATCHES)
def dispatch_batches_task(payload: dict[str, Any]) -> int:
    """Queue the next chunk of a large cohort's batches (:mod:`jobs.dispatch`); returns the tasks queued."""
    job = DispatchJob.model_validate(payload)
    stored = read_stored_cohort(process.store, job.tenant, job.cohort_id)
    if stored is None:  # deleted
        return 0
    return continue_dispatch(app, process.state, stored, job)


@app.task(name=FINALIZE_COHORT)
def finalize_cohort_task(payload: dict[str, Any]) -> list[str]:
    """Write participants.tsv and the other dataset files, then the manifest; mark the cohort succeeded
    when every subject is stored. Idempotent: it may run more than once."""
    job = FinalizeJob.model_validate(payload)
    state, store = process.state, process.store
    record = state.get(job.cohort_id) or recover_cohort(state, store, job.tenant, job.cohort_id)
    if record is None:
        return []
    config = read_model_config(resolve_model_dir(job.model))
    present = finalize_cohort(job, store, config, process.records)
    if len(present) == record.total:
        state.transition(record, Status.SUCCEEDED, allowed_from={Status.QUEUED, Status.RUNNING})
    latest = state.get(job.cohort_id)
    if latest is not None and latest.status in FINAL:
        write_final_state(store, latest)
    return present
