"""The measuring task's logic (worker.measuring) against a real S3 server (SeaweedFS), with a stand-in
``run_samseg`` that counts its runs (the real SAMSEG runs in tests/service/test_measuring.py): derivatives,
preview and measured sidecar written, the sidecar last; a measured subject is never measured again."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from jobs.contract import MeasureJob, SubjectJob
from jobs.state import bids_prefix, preview_key
from jobs.storage import ObjectStore
from models.cohort.nifti import nifti_gz_bytes
from models.dataset.bids import sidecar_path, t1w_path
from models.dataset.segmentation import Label, Samseg, dseg_path, volumes_path
from service.localstack import S3Server
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.models.dataset.test_segmentation import STATS
from worker.measuring import measure_subject


def _subject(**fields: object) -> SubjectJob:
    """A stored subject's generation job, as the measuring task receives it."""
    job = {"tenant": "lab", "cohort_id": "c1", "model": "demo", "participant_id": "sub-000001", "sex": "F", "age": 60,
           "ventricular_volume_mm3": 50000, "brain_volume_mm3": 1.4e6, "seed": 5, "qc": "samseg", **fields}  # fmt: skip
    return SubjectJob.model_validate(job)


COUNTING = """#!{python}
import sys, pathlib, nibabel as nib, numpy as np
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open({runs!r}, "a") as runs:
    runs.write("run\\n")
image = nib.load(args["-i"])
out = pathlib.Path(args["-o"]); out.mkdir()
nib.save(nib.MGHImage(np.full(image.shape, 4, np.int32), image.affine), out / "seg.mgz")
(out / "samseg.stats").write_text(pathlib.Path({stats!r}).read_text())
"""


def test_a_stored_subject_is_measured_once_with_its_sidecar_written_last(s3_server: S3Server, tmp_path: Path) -> None:
    store = ObjectStore(s3_server.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, f"b-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    job = MeasureJob(subject=_subject(qc_tolerance=0.2))
    prefix = bids_prefix("lab", "c1")
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    store.put_bytes(prefix + t1w_path("sub-000001"), nifti_gz_bytes(nib.Nifti1Image(np.zeros((8, 9, 7), np.float32),
                                                                                    affine)))  # fmt: skip
    sidecar = {"Seed": 5, "Sampler": "ddim", "NumInferenceSteps": 2, "QC": "not measured",
               "Conditioning": {"age": 60, "sex": "F", "ventricular_volume_mm3": 50000, "brain_volume_mm3": 1.4e6,
                                "normalised": {"values": [0, 0, 0, 0]}}}  # fmt: skip
    store.put_bytes(prefix + sidecar_path("sub-000001"), json.dumps(sidecar).encode())
    runs = tmp_path / "runs"
    script = tmp_path / "run_samseg"
    script.write_text(COUNTING.format(python=sys.executable, runs=str(runs), stats=str(STATS)))
    script.chmod(0o755)
    samseg = Samseg(str(script), "0.4a0", (Label(4, "Left-Lateral-Ventricle", "#781286"),))

    written: list[str] = []
    original = store.put_bytes
    store.put_bytes = lambda key, *a, **k: (written.append(key), original(key, *a, **k))[1]  # type: ignore[method-assign]
    assert measure_subject(job, store, samseg) == "measured"
    assert written[-1] == prefix + sidecar_path("sub-000001")  # the sidecar marks the subject measured: last
    assert {prefix + dseg_path("sub-000001"), prefix + volumes_path("sub-000001"),
            preview_key("lab", "c1", "sub-000001", "labels")} <= set(written)  # fmt: skip
    measured = json.loads(store.get_bytes(prefix + sidecar_path("sub-000001")))
    assert measured["Measured"]["measure"] == "samseg" and measured["Measured"]["tolerance"] == 0.2
    assert measured["QC"] in ("pass", "outside tolerance") and measured["Seed"] == 5
    assert measure_subject(job, store, samseg) == "already_measured"  # a redelivered task
    assert runs.read_text().count("run") == 1
    missing = MeasureJob(subject=_subject(participant_id="sub-000002"))
    assert measure_subject(missing, store, samseg) == "not_stored"


def test_an_attempt_outside_tolerance_is_sent_back_without_a_trace(s3_server: S3Server, tmp_path: Path) -> None:
    """With attempts left, a subject SAMSEG measures outside tolerance comes back ``regenerate`` and nothing is
    written (its next attempt replaces the image); a task of an attempt already replaced is ``superseded``; the
    last attempt is recorded however it measures."""
    store = ObjectStore(s3_server.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, f"b-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    prefix = bids_prefix("lab", "c1")
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    store.put_bytes(prefix + t1w_path("sub-000001"), nifti_gz_bytes(nib.Nifti1Image(np.zeros((8, 9, 7), np.float32),
                                                                                    affine)))  # fmt: skip
    conditioning = {"age": 60, "sex": "F", "ventricular_volume_mm3": 5000, "brain_volume_mm3": 1.4e6,
                    "normalised": {"values": [0, 0, 0, 0]}}  # fmt: skip  # 5,000 mm3: the stand-in reads ~53,000

    def store_attempt(attempt: int) -> None:
        sidecar = {"Seed": 5, "Sampler": "ddim", "NumInferenceSteps": 2, "QC": "not measured", "Attempt": attempt,
                   "Conditioning": conditioning}  # fmt: skip
        store.put_bytes(prefix + sidecar_path("sub-000001"), json.dumps(sidecar).encode())

    script = tmp_path / "run_samseg"
    script.write_text(COUNTING.format(python=sys.executable, runs=str(tmp_path / "runs"), stats=str(STATS)))
    script.chmod(0o755)
    samseg = Samseg(str(script), "0.4a0", (Label(4, "Left-Lateral-Ventricle", "#781286"),))
    first = _subject(ventricular_volume_mm3=5000, qc_tolerance=0.1, max_attempts=2)
    store_attempt(1)
    before = set(store.list_keys(prefix))
    assert measure_subject(MeasureJob(subject=first), store, samseg) == "regenerate"
    assert set(store.list_keys(prefix)) == before  # no derivative, no preview, sidecar untouched
    assert json.loads(store.get_bytes(prefix + sidecar_path("sub-000001")))["QC"] == "not measured"
    second = first.next_attempt()
    assert second is not None and second.attempt == 2 and second.next_attempt() is None
    store_attempt(2)  # the generating worker stored attempt 2
    assert measure_subject(MeasureJob(subject=first), store, samseg) == "superseded"  # a redelivered attempt-1 task
    assert measure_subject(MeasureJob(subject=second), store, samseg) == "measured"  # the last: kept, flagged
    kept = json.loads(store.get_bytes(prefix + sidecar_path("sub-000001")))
    assert kept["Attempt"] == 2 and kept["QC"] == "outside tolerance" and kept["Measured"]["measure"] == "samseg"
    assert store.get_bytes_if_present(prefix + dseg_path("sub-000001")) is not None
    assert (tmp_path / "runs").read_text().count("run") == 2
