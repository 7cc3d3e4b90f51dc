"""The BIDS dataset written to disk: files, sidecars, participants.tsv, regeneration from it, no overwrite."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import pytest

from models.cohort.conditioning import UKB_RANGES
from models.cohort.design import CohortDesign, design_subjects, read_subjects_tsv
from models.dataset.bids import PARTICIPANT_COLUMNS
from models.dataset.writer import write_cohort
from models.inference.pipeline import BrainLDMPipeline


def test_cohort_on_disk_is_a_bids_dataset(tiny_model_dir: Path, tmp_path: Path) -> None:
    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    subjects = design_subjects(CohortDesign(3, seed=5), pipeline.config.conditioning)
    out = write_cohort(pipeline, subjects, tmp_path / "cohort", num_inference_steps=3, batch_size=2)

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.10.0" and description["DatasetType"] == "raw"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "BrainSynth" and generated["ModelName"] == "tiny"
    assert generated["ModelSHA256"]["unet"] == pipeline.config.weights.unet.sha256

    with open(out / "participants.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert tuple(rows[0]) == PARTICIPANT_COLUMNS
    assert [r["participant_id"] for r in rows] == ["sub-000001", "sub-000002", "sub-000003"]
    for row, subject in zip(rows, subjects, strict=True):
        assert float(row["age"]) == subject.covariates.age and row["sex"] == subject.covariates.sex
        assert int(row["seed"]) == subject.seed
        assert float(row["age_normalised"]) == pytest.approx((subject.covariates.age - 44) / 38, abs=1e-6)
    assert set(json.loads((out / "participants.json").read_text())) == set(PARTICIPANT_COLUMNS)

    for subject in subjects:
        pid = subject.participant_id
        image = nib.load(out / pid / "anat" / f"{pid}_T1w.nii.gz")
        assert image.shape == (16, 24, 16)
        sidecar = json.loads((out / pid / "anat" / f"{pid}_T1w.json").read_text())
        assert sidecar["Seed"] == subject.seed and sidecar["Sampler"] == "ddim"
        assert sidecar["NumInferenceSteps"] == 3 and sidecar["SyntheticData"] is True
        assert sidecar["BatchSize"] == 2
        assert "research use only" in sidecar["Usage"]
        assert sidecar["Conditioning"]["age"] == subject.covariates.age
        assert sidecar["ModelSHA256"] == pipeline.config.weights.unet.sha256
        assert sidecar["SoftwareVersion"]


def test_same_seed_same_bytes_and_regeneration_from_participants(tiny_model_dir: Path, tmp_path: Path) -> None:
    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    subjects = design_subjects(CohortDesign(2, seed=8), pipeline.config.conditioning)
    first = write_cohort(pipeline, subjects, tmp_path / "a", num_inference_steps=3)
    second = write_cohort(pipeline, subjects, tmp_path / "b", num_inference_steps=3)
    name = "sub-000002/anat/sub-000002_T1w.nii.gz"
    assert (first / name).read_bytes() == (second / name).read_bytes()
    # participants.tsv of a cohort regenerates its subjects (seed column honoured), whatever the cohort seed.
    again = read_subjects_tsv(first / "participants.tsv", cohort_seed=999)
    assert again == subjects
    other = write_cohort(
        pipeline,
        design_subjects(CohortDesign(2, seed=9), pipeline.config.conditioning),
        tmp_path / "c",
        num_inference_steps=3,
    )
    assert (first / name).read_bytes() != (other / name).read_bytes()


def test_write_cohort_refuses_non_empty_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_cohort(
            pipeline,
            design_subjects(CohortDesign(1, 1), UKB_RANGES),
            tmp_path / "used",
            num_inference_steps=2,
        )


def test_a_sidecar_gives_back_the_record_it_was_written_from() -> None:
    from models.cohort.conditioning import Covariates
    from models.dataset.bids import SamplerSettings, SubjectRecord, record_from_sidecar, t1w_sidecar
    from tests.conftest import tiny_config

    record = SubjectRecord(
        "sub-000007", Covariates("M", 71.5, 41000.0, 1390000.0), (1.0, 0.7, 0.2, 0.4), 99, "pndm", 30
    )
    sidecar = t1w_sidecar(tiny_config(), record, SamplerSettings("pndm", 30, 0.0, 4, "float32"), "cpu")
    assert record_from_sidecar("sub-000007", sidecar) == record
