"""Chunked queueing of a cohort's work (jobs.dispatch) against a real Redis broker: a 100,000-subject cohort puts
one chunk and one continuation on the queue, the continuation queues the next chunk behind it, skips stored
subjects, and queues nothing once the cohort was canceled or deleted."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs.contract import DISPATCH_BATCHES, GENERATE_SUBJECTS, DispatchJob, SubjectJob
from jobs.dispatch import DISPATCH_CHUNK_BATCHES, continue_dispatch, dispatch_chunk
from jobs.queue import create_app
from jobs.settings import JobSettings
from jobs.state import CohortRecord, CohortState, Status, StoredCohort, connect
from models.cohort.conditioning import Covariates
from models.cohort.design import DEFAULT_BATCH_SIZE, SubjectSpec
from service.localstack import start_redis

QUEUE = "celery"  # Celery's default queue: the generation workers'


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = start_redis(Path(tmp_path_factory.mktemp("redis")), appendonly=False)
    yield server.url
    server.stop()


@pytest.fixture
def client(broker: str) -> redis.Redis:
    connection = connect(broker)
    connection.flushdb()
    return connection


def _cohort(n: int, cohort_id: str = "huge") -> StoredCohort:
    shared = {"tenant": "lab-a", "cohort_id": cohort_id, "model": "demo", "steps": 2}
    subjects = [
        SubjectJob.from_spec(SubjectSpec(f"sub-{i + 1:06d}", Covariates("F", 60.0, 30000.0, 1.5e6), i), **shared)
        for i in range(n)
    ]
    return StoredCohort(id=cohort_id, tenant="lab-a", model="demo", created_at=time.time(), request={},
                        subjects=subjects, subjects_per_task=DEFAULT_BATCH_SIZE)  # fmt: skip


def _register(state: CohortState, stored: StoredCohort) -> CohortRecord:
    record = CohortRecord(id=stored.id, tenant=stored.tenant, model=stored.model, status=Status.QUEUED,
                          created_at=stored.created_at, updated_at=stored.created_at, total=len(stored.subjects),
                          request={})  # fmt: skip
    state.create(record)
    return record


def _queued(client: redis.Redis) -> list[tuple[str, object]]:
    """The queue's messages in the order workers take them (task name, first argument)."""
    messages = [json.loads(raw) for raw in reversed(client.lrange(QUEUE, 0, -1))]
    return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0][0]) for m in messages]


def test_a_100000_subject_cohort_queues_one_chunk_and_a_continuation_last(broker: str, client: redis.Redis) -> None:
    celery = create_app(JobSettings(broker_url=broker, s3_access_key="k", s3_secret_key="s"))
    stored = _cohort(100_000)
    assert len(stored.batches()) == 25_000
    assert dispatch_chunk(celery, stored) == DISPATCH_CHUNK_BATCHES
    queued = _queued(client)
    assert len(queued) == DISPATCH_CHUNK_BATCHES + 1
    assert {name for name, _ in queued[:-1]} == {GENERATE_SUBJECTS}
    first_subjects = [job["participant_id"] for job in queued[0][1]["subjects"]]
    assert first_subjects == ["sub-000001", "sub-000002", "sub-000003", "sub-000004"]
    last_subjects = [job["participant_id"] for job in queued[-2][1]["subjects"]]
    assert last_subjects[-1] == f"sub-{DISPATCH_CHUNK_BATCHES * DEFAULT_BATCH_SIZE:06d}"
    # the continuation comes last: a worker takes it only once the whole chunk has been taken
    assert queued[-1] == (DISPATCH_BATCHES, {"tenant": "lab-a", "cohort_id": "huge", "start": DISPATCH_CHUNK_BATCHES})


def test_the_continuation_queues_the_next_chunk_without_stored_subjects(broker: str, client: redis.Redis) -> None:
    celery = create_app(JobSettings(broker_url=broker, s3_access_key="k", s3_secret_key="s"))
    stored = _cohort(10_000)
    state = CohortState(client)
    _register(state, stored)
    start = DISPATCH_CHUNK_BATCHES
    for participant in ("sub-002001", "sub-002002", "sub-002003", "sub-002004", "sub-002005"):
        state.mark_done(stored.id, participant)  # batch 500 entirely, one subject of batch 501
    job = DispatchJob(tenant="lab-a", cohort_id=stored.id, start=start)
    assert continue_dispatch(celery, state, stored, job) == DISPATCH_CHUNK_BATCHES - 1
    queued = _queued(client)
    assert queued[0][1]["subjects"][0]["participant_id"] == "sub-002005"  # batch 501 still has 3 to store
    assert queued[-1] == (DISPATCH_BATCHES, {"tenant": "lab-a", "cohort_id": stored.id, "start": 2 * start})
    client.delete(QUEUE)
    # the last chunk queues no further continuation
    last = DispatchJob(tenant="lab-a", cohort_id=stored.id, start=4 * start)
    assert continue_dispatch(celery, state, stored, last) == len(stored.batches()) - 4 * start
    assert {name for name, _ in _queued(client)} == {GENERATE_SUBJECTS}


def test_a_canceled_or_deleted_cohort_queues_nothing_more(broker: str, client: redis.Redis) -> None:
    celery = create_app(JobSettings(broker_url=broker, s3_access_key="k", s3_secret_key="s"))
    stored = _cohort(10_000)
    state = CohortState(client)
    record = _register(state, stored)
    job = DispatchJob(tenant="lab-a", cohort_id=stored.id, start=DISPATCH_CHUNK_BATCHES)
    assert state.transition(record, Status.CANCELED, allowed_from={Status.QUEUED})
    assert continue_dispatch(celery, state, stored, job) == 0
    state.delete(state.get(stored.id) or record)
    assert continue_dispatch(celery, state, stored, job) == 0
    other_tenant = DispatchJob(tenant="lab-b", cohort_id=stored.id, start=DISPATCH_CHUNK_BATCHES)
    _register(state, stored)
    assert continue_dispatch(celery, state, stored, other_tenant) == 0
    assert client.llen(QUEUE) == 0
