"""Subjects recorded as they are uploaded (jobs.records), against a real Redis and a real S3 server (SeaweedFS):
finalisation composes participants.tsv and SHA256SUMS from the records without reading any image back, stays
right after a redelivered task, and reads a subject back only where no record exists."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.contract import FinalizeJob, SubjectBatch, SubjectJob
from jobs.records import SubjectRecords, record_key
from jobs.state import CohortState, StoredCohort, bids_prefix, cohort_json_key, connect
from jobs.storage import ObjectStore
from models.cohort.conditioning import Covariates
from models.cohort.design import SubjectSpec
from models.dataset.bids import MANIFEST
from models.inference.pipeline import BrainLDMPipeline
from service.localstack import S3Server, start_redis
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from worker.runner import finalize_cohort, generate_subjects


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CohortState]:
    server = start_redis(Path(tmp_path_factory.mktemp("redis")), appendonly=False)
    yield CohortState(connect(server.url))
    server.stop()


class ReadCounter:
    """Wraps an ObjectStore and records every key read back (GET or stream)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store, self.read = store, []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        attribute = getattr(self.store, name)
        if name in ("get_bytes", "get_bytes_if_present", "stream"):

            def reading(key: str, *args, **kwargs):  # type: ignore[no-untyped-def]
                self.read.append(key)
                return attribute(key, *args, **kwargs)

            return reading
        return attribute


def _cohort(store: ObjectStore, tenant: str, cohort_id: str, n: int) -> SubjectBatch:
    jobs = [
        SubjectJob.from_spec(
            SubjectSpec(f"sub-{i + 1:06d}", Covariates("F", 60.0 + i, 30000.0, 1.5e6), 40 + i),
            tenant=tenant,
            cohort_id=cohort_id,
            model="tiny",
            steps=2,
        )
        for i in range(n)
    ]
    stored = StoredCohort(id=cohort_id, tenant=tenant, model="tiny", created_at=time.time(), request={},
                          subjects=jobs)  # fmt: skip
    store.put_bytes(cohort_json_key(tenant, cohort_id), stored.model_dump_json().encode())
    return SubjectBatch(subjects=jobs)


def _verify(store: ObjectStore, prefix: str) -> int:
    """Check SHA256SUMS against the stored bytes (as `sha256sum -c` would); returns the files it lists."""
    lines = store.get_bytes(prefix + MANIFEST).decode().splitlines()
    for line in lines:
        expected, relative = line.split("  ", 1)
        assert hashlib.sha256(store.get_bytes(prefix + relative)).hexdigest() == expected, relative
    return len(lines)


def test_finalisation_reads_no_image_back_and_its_sums_hold(
    state: CohortState, s3_server: S3Server, tiny_model_dir: Path
) -> None:
    store = ObjectStore(s3_server.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, f"b-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    records = SubjectRecords(state, store)
    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    batch = _cohort(store, "lab", "c-records", 3)
    generate_subjects(batch, store, lambda _model: pipeline, records=records)
    counted = ReadCounter(store)
    present = finalize_cohort(FinalizeJob(tenant="lab", cohort_id="c-records", model="tiny"), counted,  # type: ignore[arg-type]
                              pipeline.config, SubjectRecords(state, counted))  # type: ignore[arg-type]  # fmt: skip
    assert present == ["sub-000001", "sub-000002", "sub-000003"]
    assert not [key for key in counted.read if key.endswith(".nii.gz") or key.endswith("_T1w.json")], counted.read
    prefix = bids_prefix("lab", "c-records")
    assert _verify(store, prefix) == 3 * 2 + 5  # two files a subject, five dataset files
    assert "sub-000003\t62.0" in store.get_bytes(prefix + "participants.tsv").decode()

    # Redis lost the records: the durable copies in object storage serve (still no image read)
    state.redis.delete("brainsynth:cohort:c-records:records")
    counted.read.clear()
    finalize_cohort(FinalizeJob(tenant="lab", cohort_id="c-records", model="tiny"), counted, pipeline.config,  # type: ignore[arg-type]
                    SubjectRecords(state, counted))  # type: ignore[arg-type]  # fmt: skip
    assert not [key for key in counted.read if key.endswith(".nii.gz")]
    assert {record_key("lab", "c-records", p) for p in present} <= set(counted.read)
    _verify(store, prefix)

    # a subject with no record at all (stored before records existed) is read back, and the sums still hold
    store.delete_prefix(record_key("lab", "c-records", "sub-000002"))
    counted.read.clear()
    finalize_cohort(FinalizeJob(tenant="lab", cohort_id="c-records", model="tiny"), counted, pipeline.config,  # type: ignore[arg-type]
                    SubjectRecords(state, counted))  # type: ignore[arg-type]  # fmt: skip
    assert prefix + "sub-000002/anat/sub-000002_T1w.nii.gz" in counted.read
    assert prefix + "sub-000001/anat/sub-000001_T1w.nii.gz" not in counted.read
    _verify(store, prefix)


def test_a_redelivered_task_leaves_records_that_match_the_stored_bytes(
    state: CohortState, s3_server: S3Server, tiny_model_dir: Path
) -> None:
    """A task killed after writing a subject's image but before its sidecar runs again: the subject is stored
    once, and its record names the bytes that are stored (the image written twice, identically)."""
    store = ObjectStore(s3_server.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, f"b-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    records = SubjectRecords(state, store)
    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    batch = _cohort(store, "lab", "c-redelivered", 2)
    prefix = bids_prefix("lab", "c-redelivered")

    class Killed(RuntimeError):
        pass

    original = store.put_bytes

    def dies_at_the_second_sidecar(key: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if key.endswith("sub-000002_T1w.json"):
            raise Killed(key)
        return original(key, *args, **kwargs)

    store.put_bytes = dies_at_the_second_sidecar  # type: ignore[method-assign]
    with pytest.raises(Killed):
        generate_subjects(batch, store, lambda _model: pipeline, records=records)
    store.put_bytes = original  # type: ignore[method-assign]
    assert not store.exists(prefix + "sub-000002/anat/sub-000002_T1w.json")
    results = generate_subjects(batch, store, lambda _model: pipeline, records=records)  # the redelivery
    assert [r.outcome for r in results] == ["already_stored", "stored"]
    finalize_cohort(FinalizeJob(tenant="lab", cohort_id="c-redelivered", model="tiny"), store, pipeline.config,
                    records)  # fmt: skip
    assert _verify(store, prefix) == 2 * 2 + 5
