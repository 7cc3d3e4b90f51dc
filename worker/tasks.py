"""Thin Celery tasks: parse the payload, count the attempt, call :mod:`worker.runner`."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis
from celery import Task

from worker.celery_app import app
from worker.config import get_settings
from worker.contract import GENERATE_SUBJECT, SubjectJob
from worker.gpu import pipeline_for
from worker.runner import generate_subject
from worker.storage import ObjectStore


class PoisonTaskError(RuntimeError):
    """A subject was delivered more often than allowed (it keeps killing its worker)."""


@lru_cache
def object_store() -> ObjectStore:
    settings = get_settings()
    store = ObjectStore(
        settings.s3_endpoint,
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        settings.s3_bucket,
        secure=settings.s3_secure,
        public_endpoint=settings.s3_public_endpoint,
    )
    store.ensure_bucket()
    return store


@lru_cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().broker_url)


def count_attempt(job: SubjectJob) -> int:
    """Record one more delivery of ``job``; the count lives in Redis for a week."""
    key = f"brainsynth:attempts:{job.tenant}:{job.cohort_id}:{job.participant_id}"
    client = _redis()
    attempts = int(client.incr(key))
    client.expire(key, 7 * 24 * 3600)
    return attempts


@app.task(name=GENERATE_SUBJECT, bind=True)
def generate_subject_task(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    """Generate one subject (idempotent: a redelivered subject is skipped or rewritten byte for byte)."""
    job = SubjectJob.model_validate(payload)
    attempts = count_attempt(job)
    if attempts > get_settings().max_attempts:
        raise PoisonTaskError(
            f"{job.participant_id} of cohort {job.cohort_id} was delivered {attempts} times "
            f"(limit {get_settings().max_attempts}): giving up on it"
        )
    return generate_subject(job, object_store(), pipeline_for).model_dump()
