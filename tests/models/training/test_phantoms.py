"""MNI152 phantoms: seeded, on the model grid, with volumes that follow the requested targets."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainsynth.cli import main
from models.cohort.nifti import mni_centred_affine
from models.training.phantoms import PhantomTargets, erode_tissue, load_template, make_phantom

SHAPE = (40, 56, 40)  # the demo grid: 4 mm, centred on the MNI152 brain
AFFINE = np.array(mni_centred_affine(SHAPE, 4.0))
TARGETS = PhantomTargets("F", 63.0, 20000.0, 1500000.0, 1.0)


def test_template_ventricles_are_the_lateral_ventricles() -> None:
    template = load_template()
    volume = float(template.ventricles.sum())  # 1 mm voxels
    assert 10_000 < volume < 30_000  # MNI152 2009a lateral ventricles, mm3
    # Two symmetric halves about the midline.
    left, right = template.ventricles[:98].sum(), template.ventricles[99:].sum()
    assert abs(left - right) / volume < 0.1


def test_phantom_is_seeded_and_on_the_grid() -> None:
    first = make_phantom(np.random.default_rng(1), SHAPE, AFFINE)
    again = make_phantom(np.random.default_rng(1), SHAPE, AFFINE)
    other = make_phantom(np.random.default_rng(2), SHAPE, AFFINE)
    assert first.image.shape == SHAPE and first.image.dtype == np.float32
    assert first.image.min() >= 0.0 and first.image.max() <= 1.0
    assert np.array_equal(first.image, again.image) and first.covariates == again.covariates
    assert not np.array_equal(first.image, other.image)
    # The brain sits inside the field of view: the border slabs are background.
    assert first.image[:2].mean() < 0.05 and first.image[-2:].mean() < 0.05


def test_measured_volumes_follow_targets() -> None:
    small = make_phantom(np.random.default_rng(3), SHAPE, AFFINE, replace(TARGETS, ventricular_volume_mm3=10000.0))
    large = make_phantom(np.random.default_rng(3), SHAPE, AFFINE, replace(TARGETS, ventricular_volume_mm3=60000.0))
    assert large.covariates.ventricular_volume_mm3 > 1.5 * small.covariates.ventricular_volume_mm3
    atrophic = make_phantom(np.random.default_rng(3), SHAPE, AFFINE, replace(TARGETS, brain_volume_mm3=1.3e6))
    assert atrophic.covariates.brain_volume_mm3 == pytest.approx(1.3e6, rel=0.01)
    assert small.covariates.brain_volume_mm3 == pytest.approx(1.5e6, rel=0.01)
    # Head size does not change the head-size-normalised brain volume, but does change the ventricles.
    big_head = make_phantom(np.random.default_rng(3), SHAPE, AFFINE, replace(TARGETS, head_scale=1.08))
    assert big_head.covariates.brain_volume_mm3 == pytest.approx(1.5e6, rel=0.01)


def test_cli_writes_a_phantom_bids_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import make_model_dir, tiny_config

    grid = tiny_config().model_copy(
        update={"image_shape": SHAPE, "voxel_size_mm": (4.0,) * 3, "affine": mni_centred_affine(SHAPE, 4.0)}
    )
    model_dir = make_model_dir(tmp_path / "grid-model", grid)
    out = tmp_path / "phantoms"
    assert main(["phantoms", "--n", "2", "--seed", "5", "--out", str(out), "--model", str(model_dir)]) == 0
    rows = list(csv.DictReader((out / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    assert len(rows) == 2 and {r["sex"] for r in rows} <= {"F", "M"}
    assert all(5_000 < float(r["ventricular_volume_mm3"]) < 200_000 for r in rows)
    image = nib.load(out / "sub-000001" / "anat" / "sub-000001_T1w.nii.gz")
    assert image.shape == SHAPE and nib.aff2axcodes(image.affine) == ("L", "A", "S")
    assert main(["phantoms", "--n", "1", "--seed", "5", "--out", str(out)]) == 2  # not empty
    assert "not an empty folder" in capsys.readouterr().err
    # --ventricles narrows the evenly drawn share to one end of the range (and must lie inside the range)
    ends = tmp_path / "low-end"
    assert main(["phantoms", "--n", "3", "--seed", "5", "--out", str(ends), "--model", str(model_dir),
                 "--range-fraction", "1", "--ventricles", "7000", "9000"]) == 0  # fmt: skip
    for sidecar in sorted(ends.glob("sub-*/anat/*_T1w.json")):
        assert 7_000 <= json.loads(sidecar.read_text())["Targets"]["ventricular_volume_mm3"] <= 9_000
    assert "ventricles 7000-9000 mm3" in (ends / "README").read_text()
    for bad in (["5000", "9000"], ["9000", "7000"], ["160000", "180000"]):  # tiny model: 6,996-171,375
        assert main(["phantoms", "--n", "1", "--seed", "5", "--out", str(tmp_path / "bad"), "--model",
                     str(model_dir), "--ventricles", *bad]) == 2  # fmt: skip
        assert "--ventricles LO HI must satisfy" in capsys.readouterr().err


def test_erosion_removes_boundary_tissue_to_the_target() -> None:
    tissue = np.clip(np.random.default_rng(0).uniform(-0.5, 1.5, (20, 20, 20)), 0.0, 1.0).astype(np.float32)
    eroded = erode_tissue(tissue, 0.8 * float(tissue.sum()))
    assert float(eroded.sum()) == pytest.approx(0.8 * float(tissue.sum()), rel=1e-3)
    assert np.all(eroded <= tissue + 1e-6)  # never grows tissue
    assert np.all(eroded[tissue == 1.0] == 1.0)  # pure tissue stays: the loss is at the boundary
    assert np.array_equal(erode_tissue(tissue, 2.0 * float(tissue.sum())), tissue)


def test_atrophy_is_visible_after_intensity_normalisation() -> None:
    """The brain-volume covariate must show in the image (wider sulci), or no model can learn it."""
    normal = make_phantom(np.random.default_rng(3), SHAPE, AFFINE, replace(TARGETS, brain_volume_mm3=1.6e6))
    atrophic = make_phantom(np.random.default_rng(3), SHAPE, AFFINE, replace(TARGETS, brain_volume_mm3=1.25e6))
    inside = normal.image > 0.05
    bright = [float((p.image[inside] > 0.5).mean()) for p in (normal, atrophic)]
    assert bright[1] < bright[0] - 0.05


def test_a_share_of_phantoms_covers_the_models_whole_range() -> None:
    """draw_targets: with range_fraction 1 every phantom's targets are uniform over the accepted ranges (so the
    ends of the range are in the training data); with 0 the UK Biobank shape alone, as before (same stream)."""
    from models.catalogue.presets import demo
    from models.training.phantoms import draw_targets

    ranges = demo().conditioning
    spread = [draw_targets(np.random.default_rng(seed), ranges, 1.0) for seed in range(400)]
    ventricles = np.array([t.ventricular_volume_mm3 for t in spread])
    brains = np.array([t.brain_volume_mm3 for t in spread])
    vent, brain = ranges.ventricular_volume_mm3, ranges.brain_volume_mm3
    assert vent.min <= ventricles.min() < vent.min + 0.05 * (vent.max - vent.min)
    assert vent.max - 0.05 * (vent.max - vent.min) < ventricles.max() <= vent.max
    assert brain.min <= brains.min() and brains.max() <= brain.max
    assert np.histogram(ventricles, bins=4, range=(vent.min, vent.max))[0].min() > 70  # even: ~100 a quarter
    population = [draw_targets(np.random.default_rng(seed)) for seed in range(400)]
    assert [draw_targets(np.random.default_rng(seed), ranges, 0.0) for seed in range(400)] == population
    assert 15_000 < np.median([t.ventricular_volume_mm3 for t in population]) < 25_000  # the UK Biobank shape
    # the default mix: each phantom's first draw picks its kind, ~40 % over the range
    mixed = np.array([draw_targets(np.random.default_rng(seed), ranges, 0.4).ventricular_volume_mm3
                      for seed in range(400)])  # fmt: skip
    over_range = np.array([np.random.default_rng(seed).random() < 0.4 for seed in range(400)])
    assert 0.3 < over_range.mean() < 0.5
    assert np.mean(mixed[over_range] > 45_000) > 2 * np.mean(mixed[~over_range] > 45_000)
