"""Regeneration after a SAMSEG measurement, through the real queues: ``brainsynth up``'s stack (shipped settings)
with one generating and one measuring worker, the demo model, and the measuring worker's ``run_samseg`` replaced
by the seed-parity stand-in (BRAINSYNTH_SAMSEG_EXECUTABLE; it passes an image of an odd seed and reads twice the
ventricles of an even one), so the measuring worker's verdicts are known in advance and the test takes seconds;
the real SAMSEG runs in tests/service/test_measuring.py.

A subject measured outside tolerance goes back to the generating workers with its next attempt's seed, replaces
its stored image, is measured again, and the first passing attempt is kept, else the last: the archive is the
one `brainsynth sample --qc samseg --max-attempts` writes with the same SAMSEG."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.cohort.conditioning import Covariates
from models.cohort.design import SubjectSpec, attempt_seed
from models.dataset.bids import t1w_path
from service.client import BrainSynthClient, verify_manifest
from service.localstack import free_port
from service.stack import LocalStack
from tests.models.dataset.test_segmentation import STAND_IN_MEASURED, seeds_by_parity, stand_in
from tests.service.test_measuring import _has_measuring_environment

KEY = "regeneration-key"
#: per subject: passes at once; fails once, then passes; fails every attempt
SEEDS = seeds_by_parity(["o", "eo", "eee"], 3, 3)
WANTED = {"sex": "F", "age": 65.0, "ventricular_volume_mm3": STAND_IN_MEASURED.ventricular_volume_mm3,
          "brain_volume_mm3": STAND_IN_MEASURED.brain_volume_mm3}  # fmt: skip

pytestmark = pytest.mark.skipif(
    not _has_measuring_environment(), reason="no measuring environment (.venv-measure): `make install` builds it"
)


@pytest.fixture(scope="module")
def regenerating_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, str]]:
    run = tmp_path_factory.mktemp("regeneration")
    executable = stand_in(run, "seed-parity")
    stack = LocalStack(run / "data", {"lab": KEY}, port=free_port(), measure_workers=1,
                       settings={"BRAINSYNTH_DEVICE": "cpu", "BRAINSYNTH_SAMSEG_EXECUTABLE": executable})  # fmt: skip
    stack.start()
    yield stack, executable
    stack.stop()


@pytest.mark.timeout(600)
def test_subjects_outside_tolerance_are_generated_again_until_one_passes(
    regenerating_stack: tuple[LocalStack, str], tmp_path: Path
) -> None:
    stack, executable = regenerating_stack
    body = {"model": "demo", "subjects": [{**WANTED, "seed": seed} for seed in SEEDS], "qc": "samseg",
            "qc_tolerance": 0.05, "max_attempts": 3, "sampler": {"name": "ddim", "steps": 3}}  # fmt: skip
    with BrainSynthClient(stack.url, KEY) as client:
        cohort = client.submit(body)
        assert cohort["request"]["max_attempts"] == 3
        final = client.wait(cohort["id"], timeout=400)
        dataset = client.download(cohort["id"], tmp_path / "served")
    assert final["status"] == "succeeded" and final["progress"] == {"done": 3, "total": 3, "measured": 3}
    rows = list(csv.DictReader((dataset / "participants.tsv").open(), delimiter="\t"))
    assert [(r["attempt"], r["qc"], r["measure"]) for r in rows] == [
        ("1", "pass", "samseg"), ("2", "pass", "samseg"), ("3", "outside tolerance", "samseg")
    ]  # fmt: skip
    assert [int(r["seed"]) for r in rows] == [SEEDS[0], attempt_seed(SEEDS[1], 2), attempt_seed(SEEDS[2], 3)]
    sidecar = json.loads((dataset / "sub-000003" / "anat" / "sub-000003_T1w.json").read_text())
    assert sidecar["Attempt"] == 3 and sidecar["Measured"]["measure"] == "samseg"
    report = json.loads((dataset / "qc_report.json").read_text())
    assert report["measured"] == 3
    assert verify_manifest(dataset) > 0  # SHA256SUMS holds for the replaced images and their label maps

    # the same cohort locally, with the same SAMSEG: the same rows and the same image bytes
    from models.catalogue.registry import resolve_model_dir
    from models.dataset.segmentation import Samseg
    from models.dataset.writer import write_cohort
    from models.inference.pipeline import BrainLDMPipeline

    pipeline = BrainLDMPipeline.from_dir(resolve_model_dir("demo"))
    wanted = Covariates(**WANTED)  # type: ignore[arg-type]
    specs = [SubjectSpec(f"sub-00000{index + 1}", wanted, seed) for index, seed in enumerate(SEEDS)]
    local = write_cohort(pipeline, specs, tmp_path / "local", num_inference_steps=3, batch_size=3,
                         samseg=Samseg(executable, "0.4a0", ()), qc_tolerance=0.05, max_attempts=3)  # fmt: skip
    assert (local / "participants.tsv").read_text() == (dataset / "participants.tsv").read_text()
    for spec in specs:
        path = t1w_path(spec.participant_id)
        assert (local / path).read_bytes() == (dataset / path).read_bytes(), path
