"""NIfTI geometry and bytes, cohort design, and the BIDS dataset written to disk."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.bids import PARTICIPANT_COLUMNS
from models.cohort import write_cohort
from models.conditioning import UKB_RANGES
from models.design import CohortDesign, Span, design_subjects, read_subjects_tsv
from models.errors import ConditioningError
from models.nifti import grid_affine, nifti_gz_bytes, to_nifti
from models.pipeline import BrainLDMPipeline

BUNDLE_CROPPED_AFFINE = np.array(
    [[-1, 0, 0, 96.48149872], [0, 1, 0, -141.47715759], [0, 0, 1, -156.55375671], [0, 0, 0, 1]]
)


def test_paper_grid_affine_agrees_with_the_bundle_saver_crop() -> None:
    affine = np.array(grid_affine(1.0))
    # Voxel (i, j, k) of the full grid is voxel (i - 5, j - 5, k) of the bundle's cropped output.
    for voxel in ((5, 5, 0), (100, 30, 77), (154, 218, 144)):
        full = affine @ np.array([*voxel, 1.0])
        cropped = BUNDLE_CROPPED_AFFINE @ np.array([voxel[0] - 5, voxel[1] - 5, voxel[2], 1.0])
        np.testing.assert_allclose(full, cropped)
    assert nib.aff2axcodes(affine) == ("L", "A", "S")


def test_coarse_grid_covers_the_same_field_of_view() -> None:
    fine, coarse = np.array(grid_affine(1.0)), np.array(grid_affine(2.0))
    # The centre of coarse voxel 0 is the centre of the first 2x2x2 block of fine voxels.
    np.testing.assert_allclose(coarse @ [0, 0, 0, 1], fine @ [0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(coarse @ [79, 111, 79, 1], fine @ [158.5, 222.5, 158.5, 1])


def test_nifti_geometry_read_back(tmp_path: Path) -> None:
    volume = np.linspace(-0.2, 1.3, 80 * 112 * 80, dtype=np.float32).reshape(80, 112, 80)
    path = tmp_path / "t1.nii.gz"
    path.write_bytes(nifti_gz_bytes(to_nifti(volume, np.array(grid_affine(2.0)))))
    image = nib.load(path)
    assert image.shape == (80, 112, 80)
    assert image.header.get_zooms() == (2.0, 2.0, 2.0)
    assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
    sform, sform_code = image.get_sform(coded=True)
    qform, qform_code = image.get_qform(coded=True)
    assert int(sform_code) == 2 and int(qform_code) == 2
    np.testing.assert_allclose(sform, grid_affine(2.0), atol=1e-5)
    np.testing.assert_allclose(qform, grid_affine(2.0), atol=1e-5)
    assert image.get_data_dtype() == np.float32
    assert image.header.get_xyzt_units()[0] == "mm"
    data = image.get_fdata()
    assert data.min() == 0.0 and data.max() == 1.0  # clamped


def test_uint8_option_and_reproducible_gzip() -> None:
    volume = np.array([[[0.0, 0.5], [1.0, 2.0]]], dtype=np.float32)
    image = to_nifti(volume, np.eye(4), "uint8")
    assert image.get_data_dtype() == np.uint8
    assert np.asarray(image.dataobj).tolist() == [[[0, 128], [255, 255]]]
    first, second = nifti_gz_bytes(image), nifti_gz_bytes(to_nifti(volume, np.eye(4), "uint8"))
    assert first == second
    assert first[4:8] == b"\0\0\0\0"  # gzip MTIME field is zero
    assert gzip.decompress(first) == image.to_bytes()


def test_design_is_seeded_and_respects_ranges() -> None:
    design = CohortDesign(
        n_subjects=10, seed=3, female_fraction=0.3, age=Span(60, 70), brain_volume_mm3=Span.fixed(1.5e6)
    )
    subjects = design_subjects(design, UKB_RANGES)
    assert subjects == design_subjects(design, UKB_RANGES)
    assert [s.participant_id for s in subjects][:2] == ["sub-000001", "sub-000002"]
    assert sum(s.covariates.sex == "F" for s in subjects) == 3
    assert all(60 <= s.covariates.age <= 70 for s in subjects)
    assert {s.covariates.brain_volume_mm3 for s in subjects} == {1.5e6}
    assert all(UKB_RANGES.ventricular_volume_mm3.min <= s.covariates.ventricular_volume_mm3 for s in subjects)
    assert design_subjects(CohortDesign(10, 4), UKB_RANGES) != subjects


@pytest.mark.parametrize(
    ("design", "field"),
    [
        (CohortDesign(0, 1), "n_subjects"),
        (CohortDesign(2, 1, female_fraction=1.5), "female_fraction"),
        (CohortDesign(2, -1), "seed"),
        (CohortDesign(2, 1, age=Span(70, 60)), "age"),
        (CohortDesign(2, 1, age=Span(30, 60)), "age"),
        (CohortDesign(2, 1, ventricular_volume_mm3=Span(1000, 2000)), "ventricular_volume_mm3"),
        (CohortDesign(2, 1, brain_volume_mm3=Span.fixed(3e6)), "brain_volume_mm3"),
    ],
)
def test_design_validation_names_the_field(design: CohortDesign, field: str) -> None:
    with pytest.raises(ConditioningError) as info:
        design_subjects(design, UKB_RANGES)
    assert info.value.field == field


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
    from models.bids import SamplerSettings, SubjectRecord, record_from_sidecar, t1w_sidecar
    from models.conditioning import Covariates
    from tests.conftest import tiny_config

    record = SubjectRecord(
        "sub-000007", Covariates("M", 71.5, 41000.0, 1390000.0), (1.0, 0.7, 0.2, 0.4), 99, "pndm", 30
    )
    sidecar = t1w_sidecar(tiny_config(), record, SamplerSettings("pndm", 30, 0.0, 4, "float32"), "cpu")
    assert record_from_sidecar("sub-000007", sidecar) == record
