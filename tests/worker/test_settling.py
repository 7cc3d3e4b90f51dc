"""When a cohort finalises (worker.settling), against a real Redis: after its last generated subject, or, for a
SAMSEG cohort, after its last measured one, with each stored subject queued on the measuring workers' queue.
The Celery app is a recording stand-in (a unit test); the real queues run in tests/service/test_measuring.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.contract import FINALIZE_COHORT, GENERATE_SUBJECTS, MEASURE_QUEUE, MEASURE_SUBJECT, SubjectBatch, SubjectJob
from jobs.queue import create_app
from jobs.settings import JobSettings
from jobs.state import CohortRecord, CohortState, Status, connect
from models.cohort.design import attempt_seed
from service.localstack import start_redis
from worker.settling import regenerate_subject, settle_generated, settle_measured


class SentTasks:
    """Records ``send_task`` calls instead of queueing them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, args: list[dict[str, Any]]) -> None:
        self.sent.append((name, args[0]))

    def names(self) -> list[str]:
        return [name for name, _ in self.sent]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CohortState]:
    server = start_redis(Path(tmp_path_factory.mktemp("redis")), appendonly=False)
    yield CohortState(connect(server.url))
    server.stop()


def _cohort(state: CohortState, qc: str, total: int = 3) -> tuple[CohortRecord, list[SubjectJob]]:
    cohort_id = f"c{qc}{time.monotonic_ns()}"
    record = CohortRecord(id=cohort_id, tenant="lab", model="demo", status=Status.RUNNING, created_at=1.0,
                          updated_at=1.0, total=total, request={"qc": qc})  # fmt: skip
    state.create(record)
    jobs = [SubjectJob(tenant="lab", cohort_id=cohort_id, model="demo", participant_id=f"sub-{i:06d}", sex="F",
                       age=60, ventricular_volume_mm3=30000, brain_volume_mm3=1.45e6, seed=i, qc=qc)
            for i in range(1, total + 1)]  # fmt: skip
    return record, jobs


def test_a_probe_cohort_finalises_after_its_last_generated_subject(state: CohortState) -> None:
    app = SentTasks()
    record, jobs = _cohort(state, "probe")
    settle_generated(app, state, record, ["sub-000001", "sub-000002"], jobs[:2])  # type: ignore[arg-type]
    assert app.names() == []
    settle_generated(app, state, record, ["sub-000003"], jobs[2:])  # type: ignore[arg-type]
    assert app.names() == [FINALIZE_COHORT]


def test_a_samseg_cohort_finalises_only_once_every_stored_subject_is_measured(state: CohortState) -> None:
    app = SentTasks()
    record, jobs = _cohort(state, "samseg")
    # two stored, one not run (canceled mid-batch): two measuring tasks, the third settles unmeasured at once
    settle_generated(app, state, record, [job.participant_id for job in jobs], jobs[:2])  # type: ignore[arg-type]
    assert app.names() == [MEASURE_SUBJECT, MEASURE_SUBJECT]
    assert [args["subject"]["participant_id"] for _, args in app.sent] == ["sub-000001", "sub-000002"]
    settle_measured(app, state, record, ["sub-000001"])  # type: ignore[arg-type]
    settle_measured(app, state, record, ["sub-000001"])  # a redelivered measuring task counts once
    assert app.names() == [MEASURE_SUBJECT, MEASURE_SUBJECT]
    settle_measured(app, state, record, ["sub-000002"])  # type: ignore[arg-type]
    assert app.names()[-1] == FINALIZE_COHORT and app.names().count(FINALIZE_COHORT) == 1


def test_measuring_tasks_are_routed_to_the_measuring_queue() -> None:
    app = create_app(JobSettings(s3_access_key="k", s3_secret_key="s"))
    assert app.amqp.router.route({}, MEASURE_SUBJECT)["queue"].name == MEASURE_QUEUE
    assert app.amqp.router.route({}, FINALIZE_COHORT)["queue"].name == "celery"


def test_a_subject_measured_outside_tolerance_goes_back_alone_with_its_next_attempt(state: CohortState) -> None:
    """regenerate_subject: the next attempt, alone, to the generating workers' queue; it has not settled for
    measuring, so the cohort waits for it; past max_attempts nothing is sent."""
    app = SentTasks()
    record, jobs = _cohort(state, "samseg", total=1)
    first = jobs[0].model_copy(update={"max_attempts": 3})
    settle_generated(app, state, record, [first.participant_id], [first])  # type: ignore[arg-type]
    regenerate_subject(app, first)  # type: ignore[arg-type]
    name, args = app.sent[-1]
    batch = SubjectBatch.model_validate(args)
    assert name == GENERATE_SUBJECTS and [job.attempt for job in batch.subjects] == [2]
    assert batch.subjects[0].spec().seed == attempt_seed(first.seed, 2) != first.seed
    assert create_app(JobSettings(s3_access_key="k", s3_secret_key="s")).amqp.router.route({}, name)["queue"].name == (
        "celery"
    )
    assert FINALIZE_COHORT not in app.names()
    with pytest.raises(ValueError, match="no attempt left"):
        regenerate_subject(app, first.model_copy(update={"attempt": 3}))  # type: ignore[arg-type]


def test_later_attempts_are_sampled_alone_and_within_max_attempts() -> None:
    job = SubjectJob(tenant="lab", cohort_id="c", model="demo", participant_id="sub-000001", sex="F", age=60,
                     ventricular_volume_mm3=30000, brain_volume_mm3=1.45e6, seed=7, qc="samseg",
                     max_attempts=2)  # fmt: skip
    second = job.next_attempt()
    assert second is not None and second.attempt == 2 and second.next_attempt() is None
    with pytest.raises(ValueError, match="past max_attempts"):
        SubjectJob.model_validate({**job.model_dump(), "attempt": 3})
    with pytest.raises(ValueError, match="alone"):
        SubjectBatch(subjects=[second, second.model_copy(update={"participant_id": "sub-000002"})])
