"""How a cohort's subjects settle, for the generating and the measuring workers alike (torch-free).

A subject settles for generation once it will not run again (stored, not run, failed). In a cohort measured by
SAMSEG (``qc: samseg``) each stored subject is then queued for measuring, and it settles for measuring once it
will not be measured again (measured, not stored, not measurable); there the last measuring settle queues the
finalisation, elsewhere the last generation settle does. A cohort therefore succeeds only once its images are
stored and, with SAMSEG, measured. A subject SAMSEG measured outside tolerance with attempts left does not
settle: its next attempt goes back to the generating workers, whose task queues its measuring again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery

from jobs.contract import (
    FINALIZE_COHORT,
    GENERATE_SUBJECTS,
    MEASURE_SUBJECT,
    FinalizeJob,
    MeasureJob,
    SubjectBatch,
    SubjectJob,
)
from jobs.state import CohortRecord, CohortState, Status, write_final_state
from jobs.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)


def measured_by_queue(record: CohortRecord) -> bool:
    """Whether the cohort's subjects are measured by the measuring workers (SAMSEG) after they are stored."""
    return record.request.get("qc") == "samseg"


def queue_finalize(app: Celery, record: CohortRecord) -> None:
    job = FinalizeJob(tenant=record.tenant, cohort_id=record.id, model=record.model)
    app.send_task(FINALIZE_COHORT, args=[job.model_dump()])


def settle_generated(
    app: Celery,
    state: CohortState,
    record: CohortRecord,
    participants: Iterable[str],
    stored: Iterable[SubjectJob] = (),
) -> None:
    """Count ``participants`` as settled for generation; ``stored`` are those of them whose files are stored
    (now or by an earlier delivery), queued for measuring in a SAMSEG cohort."""
    participants, stored = list(participants), list(stored)
    settled = 0
    for participant in participants:
        settled = state.settle(record.id, participant)
    if measured_by_queue(record):
        for job in stored:  # routed to the measuring workers' queue (jobs.queue)
            app.send_task(MEASURE_SUBJECT, args=[MeasureJob(subject=job).model_dump()])
        queued = {job.participant_id for job in stored}
        settle_measured(app, state, record, [p for p in participants if p not in queued])
    elif settled >= record.total:
        queue_finalize(app, record)


def regenerate_subject(app: Celery, measured: SubjectJob) -> None:
    """Send the next attempt of a subject SAMSEG measured outside tolerance to the generating workers (alone:
    a batch of one). Sending it twice (a redelivered measuring task) stores it once: the generating worker
    skips an attempt whose sidecar is already stored."""
    following = measured.next_attempt()
    if following is None:
        raise ValueError(f"{measured.participant_id} has no attempt left after {measured.attempt}")
    app.send_task(GENERATE_SUBJECTS, args=[SubjectBatch(subjects=[following]).model_dump()])


def settle_measured(app: Celery, state: CohortState, record: CohortRecord, participants: Iterable[str]) -> None:
    """Count ``participants`` as settled for measuring; the last one queues the finalisation."""
    settled = 0
    for participant in participants:
        settled = state.settle_measure(record.id, participant)
    if settled >= record.total:
        queue_finalize(app, record)


def fail_cohort(state: CohortState, store: ObjectStore, record: CohortRecord, error: str) -> None:
    """Mark a queued or running cohort failed, naming why, and keep the outcome in object storage too."""
    if state.transition(record, Status.FAILED, allowed_from={Status.QUEUED, Status.RUNNING}, error=error):
        try:
            write_final_state(store, state.get(record.id) or record)
        except StorageError as err:  # Redis holds the outcome; the durable copy waits for storage
            log.warning("cohort %s failed, but its state.json could not be written: %s", record.id, err)
