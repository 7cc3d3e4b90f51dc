"""A real Celery worker process on real Redis and S3 servers: subjects stored once, byte-identical,
surviving a worker killed with SIGKILL mid-task (no eager mode, no stand-ins)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from jobs.contract import GENERATE_SUBJECTS, SubjectJob
from jobs.state import CohortState, StoredCohort, connect, register_cohort
from jobs.storage import ObjectStore
from models.cohort.design import CohortDesign, design_subjects
from models.dataset.writer import write_cohort
from models.inference.pipeline import BrainLDMPipeline
from service.localstack import RedisServer, S3Server, start_redis
from service.stack import start_worker_process, stop_process
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY

REPO = Path(__file__).resolve().parents[2]
VISIBILITY_TIMEOUT = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, tiny_model_dir: Path) -> Iterator[dict]:
    run = tmp_path_factory.mktemp("stack")
    redis_server: RedisServer = start_redis(run / "redis")
    models_dir = run / "models"
    shutil.copytree(tiny_model_dir, models_dir / "tiny")
    env = {
        **os.environ,
        "BRAINSYNTH_BROKER_URL": redis_server.url,
        "BRAINSYNTH_S3_ENDPOINT": s3_server.endpoint,
        "BRAINSYNTH_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "BRAINSYNTH_S3_SECRET_KEY": S3_SECRET_KEY,
        "BRAINSYNTH_S3_BUCKET": "worker-tests",
        "BRAINSYNTH_MODELS_DIR": str(models_dir),
        "BRAINSYNTH_DEVICE": "cpu",
        "BRAINSYNTH_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT),
    }
    client = Celery("client", broker=redis_server.url, backend=redis_server.url)
    client.conf.broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
    client.conf.result_backend_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
    store = ObjectStore(s3_server.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, "worker-tests")
    yield {
        "env": env,
        "client": client,
        "store": store,
        "redis": redis_server,
        "run": run,
        "model": models_dir / "tiny",
    }
    redis_server.stop()


def _jobs(cohort: str, n: int, steps: int, model_dir: Path) -> list[tuple[dict, bytes]]:
    """Subject jobs and the bytes their T1w must have, sampled here as one batch (as a task samples them)."""
    pipeline = BrainLDMPipeline.from_dir(model_dir)
    specs = design_subjects(CohortDesign(n, seed=11), pipeline.config.conditioning)
    out = write_cohort(
        pipeline, specs, Path(f"/tmp/expected-{cohort}-{os.getpid()}"), num_inference_steps=steps, batch_size=n
    )
    jobs = []
    for spec in specs:
        expected = (out / spec.participant_id / "anat" / f"{spec.participant_id}_T1w.nii.gz").read_bytes()
        c = spec.covariates
        payload = {"tenant": "lab-a", "cohort_id": cohort, "model": "tiny", "participant_id": spec.participant_id,
                   "sex": c.sex, "age": c.age, "ventricular_volume_mm3": c.ventricular_volume_mm3,
                   "brain_volume_mm3": c.brain_volume_mm3, "seed": spec.seed, "steps": steps}  # fmt: skip
        jobs.append((payload, expected))
    shutil.rmtree(out)
    return jobs


def _register(stack: dict, cohort: str, payloads: list[dict]) -> None:
    """Make the cohort known as the API does (cohort.json, then the Redis record) before queueing."""
    jobs = [SubjectJob.model_validate(p) for p in payloads]
    stored = StoredCohort(id=cohort, tenant="lab-a", model="tiny", created_at=time.time(), request={}, subjects=jobs)
    register_cohort(CohortState(connect(stack["redis"].url)), stack["store"], stored)


def _subject_keys(stack: dict, cohort: str) -> list[str]:
    return [k for k in stack["store"].list_keys(f"tenants/lab-a/cohorts/{cohort}/bids/") if "/sub-" in k]


def _attempts(broker: redis.Redis, cohort: str, participant: str) -> int | None:
    """Deliveries of the task whose first subject is ``participant`` (counted first thing in the task)."""
    raw = broker.hget(f"brainsynth:cohort:{cohort}:attempts", participant)
    return None if raw is None else int(raw)


def _wait_until_started(broker: redis.Redis, cohort: str, participant: str) -> None:
    """A task has started once it counted its attempt (its first action)."""
    deadline = time.monotonic() + 60
    while _attempts(broker, cohort, participant) is None and time.monotonic() < deadline:
        time.sleep(0.1)


def test_subjects_are_stored_once_with_the_local_bytes(stack: dict) -> None:
    worker = start_worker_process(1, stack["env"], stack["run"] / "worker-a.log")
    try:
        jobs = _jobs("c-simple", 2, 4, stack["model"])
        _register(stack, "c-simple", [payload for payload, _ in jobs])
        batch = {"subjects": [payload for payload, _ in jobs]}  # two subjects sampled together
        outputs = stack["client"].send_task(GENERATE_SUBJECTS, args=[batch]).get(timeout=180)
        assert [o["outcome"] for o in outputs] == ["stored", "stored"]
        for (_payload, expected), output in zip(jobs, outputs, strict=True):
            assert stack["store"].get_bytes(output["image_key"]) == expected
            assert output["image_key"].startswith("tenants/lab-a/cohorts/c-simple/bids/sub-")
        again = stack["client"].send_task(GENERATE_SUBJECTS, args=[batch]).get(timeout=60)
        assert {o["outcome"] for o in again} <= {"already_stored", "not_run"}  # the cohort may have succeeded
        assert len(_subject_keys(stack, "c-simple")) == 4  # 2 x (NIfTI + sidecar), nothing duplicated
    finally:
        stop_process(worker)


def test_a_subject_survives_its_worker_killed_mid_task(stack: dict) -> None:
    ((payload, expected),) = _jobs("c-killed", 1, 30, stack["model"])
    _register(stack, "c-killed", [payload])
    broker = redis.Redis.from_url(stack["redis"].url)
    first = start_worker_process(2, stack["env"], stack["run"] / "worker-b.log")
    result = stack["client"].send_task(GENERATE_SUBJECTS, args=[{"subjects": [payload]}])
    _wait_until_started(broker, "c-killed", payload["participant_id"])
    assert _attempts(broker, "c-killed", payload["participant_id"]) == 1, "the task never started"
    first.send_signal(signal.SIGKILL)  # mid-task: killed right after the attempt was counted
    first.wait(10)
    assert not stack["store"].exists(
        result_key
        := f"tenants/lab-a/cohorts/c-killed/bids/{payload['participant_id']}/anat/{payload['participant_id']}_T1w.json"
    )
    second = start_worker_process(3, stack["env"], stack["run"] / "worker-c.log")
    try:
        (output,) = result.get(timeout=VISIBILITY_TIMEOUT + 300)
        assert output["outcome"] == "stored"
        assert _attempts(broker, "c-killed", payload["participant_id"]) == 2
        assert stack["store"].get_bytes(output["image_key"]) == expected
        assert stack["store"].exists(result_key)
        assert len(_subject_keys(stack, "c-killed")) == 2
    finally:
        stop_process(second)


def test_a_subject_that_keeps_killing_its_worker_ends_as_a_clear_failure(stack: dict) -> None:
    ((payload, _),) = _jobs("c-poison", 1, 30, stack["model"])
    _register(stack, "c-poison", [payload])
    broker = redis.Redis.from_url(stack["redis"].url)
    env = {**stack["env"], "BRAINSYNTH_MAX_ATTEMPTS": "1"}
    first = start_worker_process(4, env, stack["run"] / "worker-d.log")
    result = stack["client"].send_task(GENERATE_SUBJECTS, args=[{"subjects": [payload]}])
    _wait_until_started(broker, "c-poison", payload["participant_id"])
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    second = start_worker_process(5, env, stack["run"] / "worker-e.log")
    try:
        with pytest.raises(Exception, match="delivered 2 times") as info:
            result.get(timeout=VISIBILITY_TIMEOUT + 120)
        assert type(info.value).__name__ == "PoisonTaskError"
        assert result.state == "FAILURE"
        assert _subject_keys(stack, "c-poison") == []
        record = CohortState(connect(stack["redis"].url)).get("c-poison")
        assert record is not None and record.status == "failed"
        assert record.error is not None and payload["participant_id"] in record.error
    finally:
        stop_process(second)


def _long_batch(stack: dict, cohort: str, n: int) -> list[dict]:
    """``n`` subjects sampled together with DDPM's 1000 steps (16 take ~25 s on this CPU)."""
    config = BrainLDMPipeline.from_dir(stack["model"]).config
    payloads = []
    for spec in design_subjects(CohortDesign(n, seed=5), config.conditioning):
        c = spec.covariates
        payloads.append({"tenant": "lab-a", "cohort_id": cohort, "model": "tiny",
                         "participant_id": spec.participant_id, "sex": c.sex, "age": c.age,
                         "ventricular_volume_mm3": c.ventricular_volume_mm3, "brain_volume_mm3": c.brain_volume_mm3,
                         "seed": spec.seed, "sampler": "ddpm", "steps": 1000})  # fmt: skip
    _register(stack, cohort, payloads)
    return payloads


def test_a_task_longer_than_the_visibility_timeout_is_delivered_once(stack: dict) -> None:
    """The heartbeat renews the running message's delivery time, so kombu never hands it out again."""
    batch = _long_batch(stack, "c-long", 16)
    payload = batch[0]
    env = {**stack["env"], "BRAINSYNTH_VISIBILITY_TIMEOUT_S": "5"}  # the task runs several times as long
    broker = redis.Redis.from_url(stack["redis"].url)
    workers = [start_worker_process(20 + i, env, stack["run"] / f"worker-long-{i}.log") for i in range(2)]
    try:
        started = time.monotonic()
        result = stack["client"].send_task(GENERATE_SUBJECTS, args=[{"subjects": batch}])
        outputs = result.get(timeout=300)
        took = time.monotonic() - started
        assert took > 12, f"the task took {took:.0f} s: it must outlast the 5 s visibility timeout twice over"
        assert [o["outcome"] for o in outputs] == ["stored"] * 16
        time.sleep(7)  # past one more timeout: a stale unacked entry would be restored now
        assert _attempts(broker, "c-long", payload["participant_id"]) == 1  # never run twice, at once or later
        assert broker.hlen("unacked") == 0
    finally:
        for worker in workers:
            stop_process(worker)


def test_with_shipped_settings_a_killed_workers_task_runs_again_within_60_s(stack: dict) -> None:
    """The shipped visibility timeout (30 s, renewed by live workers): a SIGKILLed worker's task is back on a
    live worker well within a minute."""
    env = {k: v for k, v in stack["env"].items() if k != "BRAINSYNTH_VISIBILITY_TIMEOUT_S"}
    (payload,) = _long_batch(stack, "c-shipped", 1)
    broker = redis.Redis.from_url(stack["redis"].url)
    client = Celery("shipped", broker=stack["redis"].url, backend=stack["redis"].url)  # kombu defaults as shipped
    first = start_worker_process(6, env, stack["run"] / "worker-shipped-a.log")
    second = None
    try:
        result = client.send_task(GENERATE_SUBJECTS, args=[{"subjects": [payload]}])
        _wait_until_started(broker, "c-shipped", payload["participant_id"])
        time.sleep(2)  # mid-task
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed = time.monotonic()
        second = start_worker_process(7, env, stack["run"] / "worker-shipped-b.log")
        while _attempts(broker, "c-shipped", payload["participant_id"]) == 1 and time.monotonic() - killed < 90:
            time.sleep(0.2)
        back_after = time.monotonic() - killed
        assert _attempts(broker, "c-shipped", payload["participant_id"]) == 2
        assert back_after < 60, f"the task came back {back_after:.0f} s after its worker was killed"
        (output,) = result.get(timeout=300)
        assert output["outcome"] == "stored"
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
