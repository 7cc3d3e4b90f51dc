"""The measuring workers' Celery app and task (``celery -A worker.measure_app worker -Q measure``): SAMSEG on
each stored subject of a ``qc: samseg`` cohort, in SAMSEG's own environment (no torch; its numpy 1.26).

Same reliability rules as generation (:mod:`worker.liveness`): late acks, a heartbeat that renews the running
message and stops SAMSEG once the cohort is canceled or deleted, a delivery limit, a subject measured once.
"""

from __future__ import annotations

import logging
import sys
from functools import lru_cache
from typing import Any

from celery import Task, signals

from jobs.contract import MEASURE_SUBJECT, MeasureJob
from jobs.logs import configure_logging
from jobs.queue import create_app
from jobs.state import FINAL, MEASURE_WORKERS_KEY, recover_cohort
from jobs.storage import StorageError, cohort_prefix
from models.dataset.segmentation import Samseg, SamsegStopped, SegmentationError
from worker import metrics
from worker.config import get_measure_settings
from worker.measuring import measure_subject
from worker.process import WorkerProcess, delivery_tag
from worker.settling import fail_cohort, regenerate_subject, settle_measured

log = logging.getLogger(__name__)

app = create_app(get_measure_settings())
#: This measuring worker process's store, state and heartbeat (in the measuring workers' live set).
process = WorkerProcess(get_measure_settings(), MEASURE_WORKERS_KEY)


@lru_cache
def samseg() -> Samseg:
    """SAMSEG in this worker's environment (asked once per process)."""
    settings = get_measure_settings()
    return Samseg.in_environment(sys.executable, settings.samseg_threads, settings.samseg_executable)


@signals.setup_logging.connect
def _logging(**_: object) -> None:
    configure_logging(get_measure_settings().log_format)


@app.task(name=MEASURE_SUBJECT, bind=True)
def measure_subject_task(self: Task, payload: dict[str, Any]) -> str:
    """Measure one stored subject (idempotent: a measured subject is never measured again); returns the outcome:
    measured, already_measured, not_stored, regenerate (its next attempt sent to the generating workers, which
    queue its measuring again), superseded (a later attempt is stored), not_run (cohort canceled, failed or
    deleted) or failed."""
    job = MeasureJob.model_validate(payload)
    settings, state, store = get_measure_settings(), process.state, process.store
    record = state.get(job.cohort_id) or recover_cohort(state, store, job.tenant, job.cohort_id)
    where = {"cohort_id": job.cohort_id, "tenant": job.tenant, "subject_id": job.participant_id}
    if record is None or record.tenant != job.tenant:
        return "not_run"
    if record.status in FINAL:
        settle_measured(app, state, record, [job.participant_id])
        return "not_run"
    attempts = state.count_attempt(job.cohort_id, f"measure:{job.participant_id}:{job.attempt}")
    if attempts > settings.max_attempts:
        log.warning("measuring delivered %d times (limit %d): kept unmeasured", attempts, settings.max_attempts,
                    extra=where)  # fmt: skip
        metrics.FAILURES.labels(kind="measure-poison").inc()
        settle_measured(app, state, record, [job.participant_id])
        return "failed"
    if attempts > 1:
        metrics.REDELIVERIES.inc()
    stop = process.heartbeat.begin(job.cohort_id, delivery_tag(self))
    try:
        outcome = measure_subject(job, store, samseg(), stop.is_set, process.records)
    except SamsegStopped:
        outcome = "not_run"
    except SegmentationError as err:  # SAMSEG failed on this image: it would fail again; kept unmeasured
        log.warning("SAMSEG failed: %s", err, extra=where)
        metrics.FAILURES.labels(kind="measure").inc()
        outcome = "failed"
    except StorageError as err:  # storage stayed down past the retry budget: fail the cohort, naming why
        fail_cohort(state, store, record, f"{job.participant_id}: object storage failed while measuring: {err}")
        settle_measured(app, state, record, [job.participant_id])
        raise
    finally:
        process.heartbeat.end()
    if state.get(record.id) is None:  # deleted while SAMSEG ran: remove what this task wrote after the delete
        store.delete_prefix(cohort_prefix(job.tenant, job.cohort_id))
        return "not_run"
    if outcome == "regenerate":  # settles later, once an attempt is kept
        regenerate_subject(app, job.subject)
    elif outcome != "superseded":  # a superseded task's subject settles through its later attempt's task
        if outcome in ("measured", "already_measured"):
            state.mark_measured(record.id, job.participant_id)
        settle_measured(app, state, record, [job.participant_id])
    log.info("subject %s", outcome, extra=where)
    return outcome
