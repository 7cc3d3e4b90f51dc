"""Cohort job state, shared by the API and the workers: Redis for speed, object storage for durability.

Redis (AOF in production) holds each cohort's record and per-subject progress::

    brainsynth:cohort:{id}            hash  tenant, model, status, created_at, updated_at, total, error, request
    brainsynth:cohort:{id}:done       set   participant ids whose files are stored
    brainsynth:cohort:{id}:settled    set   participant ids that will not run again (stored, skipped, failed)
    brainsynth:cohort:{id}:attempts   hash  deliveries of each task, by its first participant id (measuring
                                            tasks by ``measure:`` and the participant id)
    brainsynth:cohort:{id}:measured   set   participant ids measured by SAMSEG (``qc: samseg`` cohorts)
    brainsynth:cohort:{id}:measure-settled  set  participant ids that will not be measured again (measured,
                                            not stored, or not measurable); all of them: finalise
    brainsynth:cohort:{id}:records    hash  participant id -> its files' sha256 and sizes and its participants.tsv
                                            fields, recorded at upload (:mod:`jobs.records`)
    brainsynth:tenant:{t}:cohorts     zset  cohort ids by creation time
    brainsynth:tenant:{t}:active      set   cohort ids not yet final (the per-tenant limit)
    brainsynth:idempotency:{t}:{key}  str   {"hash", "cohort_id"} of a POST with an Idempotency-Key
    brainsynth:workers                zset  worker name -> time of its last heartbeat (worker.liveness)
    brainsynth:measure-workers        zset  the same for the measuring workers

Object storage keeps what is needed to rebuild all of it (:func:`recover_cohort`): ``cohort.json`` (the
request and every subject job, written before anything is queued), each subject's sidecar (written last
per subject, so its presence means done) and ``state.json`` (a final status). Sets make every update
idempotent, so a redelivered task never counts a subject twice.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import redis
from pydantic import BaseModel, Field
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs.contract import MEASURE_QUEUE, SubjectJob
from jobs.storage import ObjectStore, cohort_prefix
from models.dataset.bids import sidecar_path

PREFIX = "brainsynth"
#: Live workers: name -> time of the last heartbeat (see :mod:`worker.liveness`).
WORKERS_KEY = f"{PREFIX}:workers"
MEASURE_WORKERS_KEY = f"{PREFIX}:measure-workers"
#: Operational counts for /metrics, tenant-free: cohorts per status (kept by create, transition and delete;
#: since the last Redis flush) and subjects settled per outcome (kept by the workers).
COHORTS_BY_STATUS_KEY = f"{PREFIX}:metrics:cohorts-by-status"
SUBJECT_OUTCOMES_KEY = f"{PREFIX}:metrics:subject-outcomes"
#: Celery's queue (its Redis list) and kombu's hash of delivered, unacknowledged messages.
QUEUE_KEYS = {"queued": "celery", "unacked": "unacked", "measure_queued": MEASURE_QUEUE}
#: The API replicas' shared secret for link tokens (``service.links``), made once.
LINK_SECRET_KEY = f"{PREFIX}:link-token-secret"


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED})


class CohortRecord(BaseModel):
    """A cohort as the API reports it."""

    id: str
    tenant: str
    model: str
    status: Status
    created_at: float
    updated_at: float
    total: int = Field(ge=1)
    request: dict[str, Any]
    error: str | None = None


class StoredCohort(BaseModel):
    """``cohort.json`` in object storage: enough to rebuild the record and re-queue missing subjects."""

    id: str
    tenant: str
    model: str
    created_at: float
    request: dict[str, Any]
    subjects: list[SubjectJob]
    #: consecutive subjects per task; a subject's bytes depend (within 1e-5) on its batch, so re-queued
    #: work keeps the same batches
    subjects_per_task: int = Field(1, ge=1, le=16)

    def batches(self) -> list[list[SubjectJob]]:
        size = self.subjects_per_task
        return [self.subjects[start : start + size] for start in range(0, len(self.subjects), size)]


def cohort_key(cohort_id: str) -> str:
    return f"{PREFIX}:cohort:{cohort_id}"


def bids_prefix(tenant: str, cohort_id: str) -> str:
    """Where a cohort's BIDS dataset lives in the bucket (the archive's root)."""
    return cohort_prefix(tenant, cohort_id) + "bids/"


#: The PNG previews of each stored subject (``models.dataset.previews``): outside the BIDS tree, so never in
#: the archive; written before the subject's sidecar, so a stored subject has them (``labels``, SAMSEG's
#: outlines, before the measured sidecar: a SAMSEG-measured subject has it).
PREVIEW_KINDS = ("views", "axial", "labels")


def preview_key(tenant: str, cohort_id: str, participant_id: str, kind: str) -> str:
    """Where one of a subject's previews (``views``: three mid-slices; ``axial``: mid-axial alone; ``labels``:
    the mid-slices with SAMSEG's outlines) lives."""
    if kind not in PREVIEW_KINDS:
        raise ValueError(f"preview kind must be one of {PREVIEW_KINDS}, got {kind!r}")
    return cohort_prefix(tenant, cohort_id) + f"previews/{participant_id}_{kind}.png"


def cohort_json_key(tenant: str, cohort_id: str) -> str:
    return cohort_prefix(tenant, cohort_id) + "cohort.json"


def state_json_key(tenant: str, cohort_id: str) -> str:
    return cohort_prefix(tenant, cohort_id) + "state.json"


# Move a cohort to ARGV[1] if its status is one of ARGV[4..]; keeps the tenant's active set in step.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
for i = 4, #ARGV do
  if status == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
    redis.call('HINCRBY', KEYS[3], status, -1)
    redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
    if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
    if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'canceled' then
      redis.call('SREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
    end
    return status
  end
end
return false
"""


# Add ARGV[1] to the tenant's active set (KEYS[1]) unless it already holds ARGV[2] cohorts: the per-tenant
# limit checked and taken in one step, so concurrent submissions cannot all pass the check.
_RESERVE = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""


def connect(url: str, retries: int = 20) -> redis.Redis:
    """A Redis client that rides out a restart (20 retries: ~30 s; the API uses fewer and answers 503)."""
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=2,
        socket_timeout=10,
    )


class CohortState:
    """Reads and updates cohort records in Redis; every write is idempotent."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._transition = client.register_script(_TRANSITION)
        self._reserve = client.register_script(_RESERVE)

    def _tenant(self, tenant: str, what: str) -> str:
        return f"{PREFIX}:tenant:{tenant}:{what}"

    def create(self, record: CohortRecord, idempotency_key: str | None = None) -> None:
        key = cohort_key(record.id)
        if not self.redis.exists(key):  # a re-created (recovered) record is counted once
            self.redis.hincrby(COHORTS_BY_STATUS_KEY, record.status.value, 1)
        fields = record.model_dump(mode="json", exclude_none=True)
        fields["request"] = json.dumps(record.request, sort_keys=True)
        if idempotency_key is not None:
            fields["idempotency_key"] = idempotency_key
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=fields)
            pipe.zadd(self._tenant(record.tenant, "cohorts"), {record.id: record.created_at})
            if record.status not in FINAL:
                pipe.sadd(self._tenant(record.tenant, "active"), record.id)
            pipe.execute()

    def get(self, cohort_id: str) -> CohortRecord | None:
        raw = self.redis.hgetall(cohort_key(cohort_id))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        fields.pop("idempotency_key", None)
        fields["request"] = json.loads(fields["request"])
        return CohortRecord.model_validate(fields)

    def transition(self, record: CohortRecord, to: Status, *, allowed_from: set[Status], error: str = "") -> bool:
        """Move the cohort to ``to`` if its current status is in ``allowed_from``; whether it moved."""
        moved = self._transition(
            keys=[cohort_key(record.id), self._tenant(record.tenant, "active"), COHORTS_BY_STATUS_KEY],
            args=[to.value, time.time(), error, *(s.value for s in allowed_from)],
        )
        return bool(moved)

    def mark_done(self, cohort_id: str, participant: str) -> None:
        self.redis.sadd(f"{cohort_key(cohort_id)}:done", participant)

    def _add_and_count(self, key: str, participant: str) -> int:
        """Add ``participant`` to the set ``key`` (idempotent); returns the set's size."""
        with self.redis.pipeline() as pipe:
            pipe.sadd(key, participant)
            pipe.scard(key)
            return int(pipe.execute()[1])

    def settle(self, cohort_id: str, participant: str) -> int:
        """Record that ``participant`` will not run again; returns how many subjects have settled."""
        return self._add_and_count(f"{cohort_key(cohort_id)}:settled", participant)

    def mark_measured(self, cohort_id: str, participant: str) -> None:
        self.redis.sadd(f"{cohort_key(cohort_id)}:measured", participant)

    def settle_measure(self, cohort_id: str, participant: str) -> int:
        """Record that ``participant`` will not be measured again; returns how many have settled so."""
        return self._add_and_count(f"{cohort_key(cohort_id)}:measure-settled", participant)

    def count_attempt(self, cohort_id: str, participant: str) -> int:
        """Record one more delivery of the task whose first subject is ``participant``; kept a week."""
        key = f"{cohort_key(cohort_id)}:attempts"
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, participant, 1)
            pipe.expire(key, 7 * 24 * 3600)
            return int(pipe.execute()[0])

    def done_among(self, cohort_id: str, participants: list[str]) -> set[str]:
        """Those of ``participants`` whose files are stored (one round trip, whatever the cohort's size)."""
        if not participants:
            return set()
        flags = self.redis.smismember(f"{cohort_key(cohort_id)}:done", participants)
        return {p for p, flag in zip(participants, flags, strict=True) if flag}

    def done(self, cohort_id: str) -> set[str]:
        return {m.decode() for m in self.redis.smembers(f"{cohort_key(cohort_id)}:done")}

    def progress(self, cohort_id: str) -> tuple[int, int, int]:
        """(stored, settled, measured by SAMSEG) subject counts."""
        with self.redis.pipeline() as pipe:
            for what in ("done", "settled", "measured"):
                pipe.scard(f"{cohort_key(cohort_id)}:{what}")
            done, settled, measured = pipe.execute()
        return int(done), int(settled), int(measured)

    def list_page(self, tenant: str, before: float | None, count: int) -> list[tuple[str, float]]:
        """Up to ``count`` (cohort id, created_at) of ``tenant``, newest first, created before ``before``."""
        rows = self.redis.zrevrangebyscore(
            self._tenant(tenant, "cohorts"),
            max="+inf" if before is None else f"({before!r}",
            min="-inf",
            start=0,
            num=count,
            withscores=True,
        )
        return [(member.decode(), float(score)) for member, score in rows]

    def reserve_active(self, tenant: str, cohort_id: str, limit: int) -> bool:
        """Count ``cohort_id`` as one of ``tenant``'s active cohorts if fewer than ``limit`` are (atomic)."""
        return bool(self._reserve(keys=[self._tenant(tenant, "active")], args=[cohort_id, limit]))

    def release_active(self, tenant: str, cohort_id: str) -> None:
        """Undo :meth:`reserve_active` (the cohort was never registered)."""
        self.redis.srem(self._tenant(tenant, "active"), cohort_id)

    def delete(self, record: CohortRecord) -> None:
        """Forget the cohort, and the Idempotency-Key that created it (a new POST with it makes a new one)."""
        key = cohort_key(record.id)
        idempotency_key = self.redis.hget(key, "idempotency_key")
        if idempotency_key is not None:
            self.release_idempotency_key(record.tenant, idempotency_key.decode(), record.id)
        status = self.redis.hget(key, "status")
        with self.redis.pipeline() as pipe:
            if status is not None:
                pipe.hincrby(COHORTS_BY_STATUS_KEY, status.decode(), -1)
            parts = ("", ":done", ":settled", ":attempts", ":measured", ":measure-settled", ":records")
            pipe.delete(*(f"{key}{part}" for part in parts))
            pipe.zrem(self._tenant(record.tenant, "cohorts"), record.id)
            pipe.srem(self._tenant(record.tenant, "active"), record.id)
            pipe.execute()

    def claim_idempotency_key(self, tenant: str, key: str, body_hash: str, cohort_id: str) -> dict[str, str]:
        """Bind ``key`` to ``cohort_id`` unless it is bound already; returns the binding that holds (24 h)."""
        name = f"{PREFIX}:idempotency:{tenant}:{key}"
        mine = {"hash": body_hash, "cohort_id": cohort_id}
        if self.redis.set(name, json.dumps(mine), nx=True, ex=24 * 3600):
            return mine
        existing = self.redis.get(name)
        return json.loads(existing) if existing else mine

    def release_idempotency_key(self, tenant: str, key: str, cohort_id: str) -> None:
        """Forget ``key`` if it is bound to ``cohort_id`` (the request failed before the cohort existed)."""
        name = f"{PREFIX}:idempotency:{tenant}:{key}"
        existing = self.redis.get(name)
        if existing and json.loads(existing)["cohort_id"] == cohort_id:
            self.redis.delete(name)


def link_secret(client: redis.Redis) -> bytes:
    """The secret every API replica signs link tokens with: made by the first to ask (``SET NX``), then read."""
    for _ in range(3):  # a flush between the two calls only costs another round
        client.set(LINK_SECRET_KEY, secrets.token_hex(32), nx=True)
        stored = client.get(LINK_SECRET_KEY)
        if stored is not None:
            return bytes.fromhex(stored.decode() if isinstance(stored, bytes) else stored)
    raise redis.RedisError("the link-token secret could not be stored in Redis")


def count_subjects(client: redis.Redis, outcome: str, n: int = 1) -> None:
    """Add ``n`` subjects that ended as ``outcome`` (``stored`` or ``failed``) to the /metrics totals."""
    if n:
        client.hincrby(SUBJECT_OUTCOMES_KEY, outcome, n)


def operational_counts(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Tenant-free counts for /metrics: cohorts per status, subjects per outcome, tasks queued and unacked."""
    with client.pipeline() as pipe:
        pipe.hgetall(COHORTS_BY_STATUS_KEY)
        pipe.hgetall(SUBJECT_OUTCOMES_KEY)
        pipe.llen(QUEUE_KEYS["queued"])
        pipe.hlen(QUEUE_KEYS["unacked"])
        pipe.llen(QUEUE_KEYS["measure_queued"])
        cohorts, subjects, queued, unacked, measure_queued = pipe.execute()
    return {
        "cohorts": {status.value: max(0, int(cohorts.get(status.value.encode(), 0))) for status in Status},
        "subjects": {outcome: int(subjects.get(outcome.encode(), 0)) for outcome in ("stored", "failed")},
        "tasks": {"queued": int(queued), "unacked": int(unacked), "measure_queued": int(measure_queued)},
    }


def live_workers(client: redis.Redis, within_s: float, key: str = WORKERS_KEY) -> int:
    """How many workers (measuring workers with ``key=MEASURE_WORKERS_KEY``) beat (``worker.liveness``) in the
    last ``within_s`` seconds."""
    return int(client.zcount(key, time.time() - within_s, "+inf"))


def write_final_state(store: ObjectStore, record: CohortRecord) -> None:
    """Persist a final status in object storage (the durable copy of the Redis record's outcome)."""
    document = {"status": record.status.value, "error": record.error, "updated_at": record.updated_at}
    store.put_bytes(state_json_key(record.tenant, record.id), json.dumps(document).encode(), "application/json")


def read_stored_cohort(store: ObjectStore, tenant: str, cohort_id: str) -> StoredCohort | None:
    """The cohort's ``cohort.json``; ``None`` when it never existed or was deleted."""
    raw = store.get_bytes_if_present(cohort_json_key(tenant, cohort_id))
    return None if raw is None else StoredCohort.model_validate_json(raw)


def recover_cohort(state: CohortState, store: ObjectStore, tenant: str, cohort_id: str) -> CohortRecord | None:
    """Rebuild a cohort's Redis record from object storage (after Redis lost it); ``None`` if unknown.

    Done subjects are those whose sidecar exists; the status is the stored final one, else running or
    queued. The caller re-queues the batches that still have a subject to store (:func:`stored_subjects`).
    """
    stored = read_stored_cohort(store, tenant, cohort_id)
    if stored is None or stored.tenant != tenant:  # never existed, or deleted meanwhile
        return None
    done = stored_subjects(store, stored)
    final_raw = store.get_bytes_if_present(state_json_key(tenant, cohort_id))
    final: dict[str, Any] = json.loads(final_raw) if final_raw is not None else {}
    status = Status(final["status"]) if final else (Status.RUNNING if done else Status.QUEUED)
    record = CohortRecord(
        id=stored.id,
        tenant=stored.tenant,
        model=stored.model,
        status=status,
        created_at=stored.created_at,
        updated_at=float(final.get("updated_at") or time.time()),
        total=len(stored.subjects),
        request=stored.request,
        error=final.get("error"),
    )
    state.create(record)
    for participant in done:
        state.mark_done(cohort_id, participant)
        state.settle(cohort_id, participant)
    if stored.request.get("qc") == "samseg":
        for participant, (_, measured) in samseg_attempts(store, stored, done).items():
            if measured:
                state.mark_measured(cohort_id, participant)
                state.settle_measure(cohort_id, participant)
    return record


def stored_among(keys: set[str], prefix: str, participants: Iterable[str]) -> set[str]:
    """Those of ``participants`` whose files are complete among the object ``keys`` under a cohort's BIDS
    ``prefix``: a subject's sidecar is written after its NIfTI, so its presence means stored (the one test of
    it, for workers, finalisation and recovery)."""
    return {p for p in participants if prefix + sidecar_path(p) in keys}


def stored_of(store: ObjectStore, prefix: str, participants: Iterable[str]) -> set[str]:
    """:func:`stored_among` for a few ``participants`` (a task's batch): one HEAD of each sidecar instead of
    listing the cohort, so a task's check costs the same at 10 subjects and at 100,000."""
    return {p for p in participants if store.exists(prefix + sidecar_path(p))}


def stored_subjects(store: ObjectStore, stored: StoredCohort) -> set[str]:
    """Participant ids of ``stored`` whose files are complete in object storage."""
    prefix = bids_prefix(stored.tenant, stored.id)
    return stored_among(set(store.list_keys(prefix)), prefix, (job.participant_id for job in stored.subjects))


def samseg_attempts(store: ObjectStore, stored: StoredCohort, done: Iterable[str]) -> dict[str, tuple[int, bool]]:
    """For each of the stored subjects ``done``: the attempt its sidecar records and whether SAMSEG measured it
    (a measuring worker writes the sidecar last, with ``Measured.measure == "samseg"``, so that means measured;
    a regenerated attempt's sidecar comes unmeasured)."""
    prefix = bids_prefix(stored.tenant, stored.id)
    attempts = {}
    for participant in done:
        raw = store.get_bytes_if_present(prefix + sidecar_path(participant))
        if raw is not None:
            sidecar = json.loads(raw)
            measured = (sidecar.get("Measured") or {}).get("measure") == "samseg"
            attempts[participant] = (int(sidecar.get("Attempt") or 1), measured)
    return attempts


def register_cohort(
    state: CohortState, store: ObjectStore, stored: StoredCohort, idempotency_key: str | None = None
) -> CohortRecord:
    """Make a new cohort known: ``cohort.json`` in object storage first (durable), then the Redis record
    (with the Idempotency-Key that created it, released when the cohort is deleted).

    The caller queues the subject jobs afterwards.
    """
    store.put_bytes(cohort_json_key(stored.tenant, stored.id), stored.model_dump_json().encode(), "application/json")
    record = CohortRecord(
        id=stored.id,
        tenant=stored.tenant,
        model=stored.model,
        status=Status.QUEUED,
        created_at=stored.created_at,
        updated_at=stored.created_at,
        total=len(stored.subjects),
        request=stored.request,
    )
    state.create(record, idempotency_key)
    return record
