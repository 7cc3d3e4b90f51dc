"""SAMSEG's label volumes as the conditioning's two measures, on the stats of a real SAMSEG run (a demo
subject at 4 mm; `run_samseg --threads 2`, 3 min 45 s here)."""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.cohort.nifti import nifti_gz_bytes
from models.dataset.segmentation import (
    BRAIN_LABELS,
    VENTRICLE_LABELS,
    SamsegStopped,
    SegmentationError,
    dseg_nifti,
    dseg_path,
    dseg_tsv,
    read_lookup_table,
    read_samseg_stats,
    run_samseg,
    samseg_dataset_files,
    segmented_volumes,
    volumes_path,
)

STATS = Path(__file__).parent / "data" / "samseg-demo-4mm.stats"


def test_a_real_samseg_run_gives_both_measures() -> None:
    volumes = read_samseg_stats(STATS.read_text())
    assert len(volumes) == 45 and volumes["Intra-Cranial"] == pytest.approx(2219150.405168)
    measured = segmented_volumes(volumes)
    # lateral ventricles 20,811 + 25,478, inferior horns 165 + 218, 3rd 3,658, 4th 2,744
    assert measured.ventricular_volume_mm3 == pytest.approx(53074.574243)
    assert measured.brain_grey_white_mm3 == pytest.approx(1678334.879732)
    assert measured.brain_volume_mm3(2219150.405168) == pytest.approx(measured.brain_grey_white_mm3)
    assert measured.brain_volume_mm3(1109575.202584) == pytest.approx(measured.brain_grey_white_mm3 / 2)
    # scaled to the MNI152 head: this 4 mm head's ICV reads larger than the template's 1,889,832 mm3
    assert measured.brain_volume_mm3() == pytest.approx(1678334.879732 * 1889831.899527 / 2219150.405168)
    assert not set(VENTRICLE_LABELS) & set(BRAIN_LABELS)
    assert "CSF" not in BRAIN_LABELS and "Skull" not in BRAIN_LABELS


def test_a_foreign_or_broken_stats_file_is_refused_naming_what_is_wrong() -> None:
    volumes = read_samseg_stats(STATS.read_text())
    del volumes["3rd-Ventricle"]
    with pytest.raises(SegmentationError, match="lacks 3rd-Ventricle"):
        segmented_volumes(volumes)
    with pytest.raises(SegmentationError, match="line 2 is not"):
        read_samseg_stats("# Measure Intra-Cranial, 1.0, mm^3\nLeft-Lateral-Ventricle 12\n")


# -- the derivative dataset and the SAMSEG runner ---------------------------------------------------------
LOOKUP = """0 0 Unknown                       0  0  0  0
4 33 Left-Lateral-Ventricle        120   18  134  255
2 14 Left-Cerebral-White-Matter    245  245  245  255
"""


def test_labels_come_from_samseg_s_lookup_table_sorted_by_index() -> None:
    labels = read_lookup_table(LOOKUP)
    assert [(label.index, label.name, label.color) for label in labels] == [
        (0, "Unknown", "#000000"),
        (2, "Left-Cerebral-White-Matter", "#f5f5f5"),
        (4, "Left-Lateral-Ventricle", "#781286"),
    ]
    assert dseg_tsv(labels).splitlines() == ["index\tname\tcolor", "0\tUnknown\t#000000",
        "2\tLeft-Cerebral-White-Matter\t#f5f5f5", "4\tLeft-Lateral-Ventricle\t#781286"]  # fmt: skip
    with pytest.raises(SegmentationError, match="line 1"):
        read_lookup_table("four 1 Name 1 2 3 4\n")


def test_derivative_paths_sit_in_their_own_dataset_and_refuse_non_labels() -> None:
    assert dseg_path("sub-000001") == "derivatives/samseg/sub-000001/anat/sub-000001_dseg.nii.gz"
    assert volumes_path("sub-000001") == "derivatives/samseg/sub-000001/anat/sub-000001_desc-samseg_volumes.tsv"
    with pytest.raises(ValueError, match="not a BIDS label"):
        dseg_path("../sub-1")
    files = samseg_dataset_files("0.4a0", read_lookup_table(LOOKUP))
    description = json.loads(files["derivatives/samseg/dataset_description.json"])
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Version"] == "0.4a0"


def _image(shape: tuple[int, int, int] = (6, 7, 5)) -> nib.Nifti1Image:
    affine = np.array([[-4.0, 0, 0, 78], [0, 4, 0, -132.02], [0, 0, 4, -68.47], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.random.default_rng(0).random(shape, dtype=np.float32), affine)
    image.set_sform(affine, code=2)
    image.set_qform(affine, code=2)
    return image


def test_the_label_map_gets_the_image_s_grid_and_exact_affine() -> None:
    image = _image()
    labels = np.zeros(image.shape, dtype=np.int32)
    labels[2:4, 2:5, 1:3] = 4
    segmentation = nib.MGHImage(labels, image.affine + 1e-5)  # SAMSEG writes MGH with float rounding
    dseg = nib.Nifti1Image.from_bytes(gzip.decompress(dseg_nifti(segmentation, image)))
    assert np.array_equal(dseg.affine, image.affine) and dseg.get_data_dtype() == np.int16
    assert np.array_equal(np.asarray(dseg.dataobj), labels) and dseg.header.get_intent()[0] == "label"
    with pytest.raises(SegmentationError, match="grid"):
        dseg_nifti(nib.MGHImage(np.zeros((6, 7, 4), np.int32), image.affine), image)
    with pytest.raises(SegmentationError, match="affine"):
        dseg_nifti(nib.MGHImage(labels, image.affine * 2), image)


STAND_IN = """import re, sys, time, pathlib, nibabel as nib, numpy as np
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
mode = {mode!r}
if mode == "fail":
    print("cannot read the image"); sys.exit(3)
if mode == "slow":
    time.sleep(60)
image = nib.load(args["-i"])
out = pathlib.Path(args["-o"]); out.mkdir()
nib.save(nib.MGHImage(np.full(image.shape, 4, np.int32), image.affine), out / "seg.mgz")
stats = pathlib.Path({stats!r}).read_text()
seed = int(re.search(rb"seed ([0-9]+)", image.header["descrip"].tobytes()).group(1)) if mode == "seed-parity" else 1
if seed % 2 == 0:  # seed-parity: an image of an even seed reads with twice the ventricles
    lines = [re.sub(r", ([0-9.]+), mm", lambda m: f", {{2 * float(m.group(1))}}, mm", line)
             if "Ventricle" in line or "Inf-Lat-Vent" in line else line for line in stats.splitlines()]
    stats = "\\n".join(lines) + "\\n"
(out / "samseg.stats").write_text(stats)
"""
#: What the stand-in measures on an image of an odd seed: the real run's stats (STATS); an even seed's
#: image reads twice these ventricles in mode ``seed-parity``.
STAND_IN_MEASURED = segmented_volumes(read_samseg_stats(STATS.read_text())).measurement()


def stand_in(tmp_path: Path, mode: str) -> str:
    """A stand-in ``run_samseg`` (for unit tests and the queue's plumbing; the real one runs in
    tests/service/test_measuring.py): ``ok``, ``fail``, ``slow`` or ``seed-parity`` (its measure passes an
    image whose seed, read from the NIfTI description, is odd, and doubles the ventricles of an even one)."""
    script = tmp_path / f"run_samseg_{mode}"
    script.write_text(f"#!{sys.executable}\n" + STAND_IN.format(mode=mode, stats=str(STATS)))
    script.chmod(0o755)
    return str(script)


def test_run_samseg_reads_its_outputs_and_names_its_failures(tmp_path: Path) -> None:
    image = nifti_gz_bytes(_image())
    result = run_samseg(image, stand_in(tmp_path, "ok"), threads=1)
    assert result.volumes == read_samseg_stats(STATS.read_text())
    assert result.measured().measurement(0.1).measure == "samseg"
    assert set(np.unique(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(result.dseg)).dataobj))) == {4}
    with pytest.raises(SegmentationError, match="exited with code 3: cannot read the image"):
        run_samseg(image, stand_in(tmp_path, "fail"))


def test_a_stop_kills_samseg_within_its_poll(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(SamsegStopped):
        run_samseg(nifti_gz_bytes(_image()), stand_in(tmp_path, "slow"), should_stop=lambda: True, poll_s=0.2)
    assert time.monotonic() - started < 5


def test_the_labels_preview_outlines_brain_and_ventricles_in_their_colours() -> None:
    import io

    from PIL import Image

    from models.dataset.segmentation import BRAIN_OUTLINE, VENTRICLE_OUTLINE, Label, label_outlines_png

    image = _image((20, 24, 20))
    labels = np.zeros(image.shape, dtype=np.int16)
    labels[4:16, 4:20, 4:16] = 2  # white matter
    labels[8:12, 10:14, 8:12] = 4  # a ventricle inside it
    dseg = nifti_gz_bytes(nib.Nifti1Image(labels, image.affine))
    names = [Label(2, "Left-Cerebral-White-Matter", "#ffffff"), Label(4, "Left-Lateral-Ventricle", "#781286")]
    png = Image.open(io.BytesIO(label_outlines_png(nifti_gz_bytes(image), dseg, names)))
    pixels = np.asarray(png)
    assert png.mode == "RGB" and png.height >= 160
    colours = {tuple(p) for p in pixels.reshape(-1, 3)}
    assert BRAIN_OUTLINE in colours and VENTRICLE_OUTLINE in colours
    red = np.all(pixels == VENTRICLE_OUTLINE, axis=-1).sum()
    yellow = np.all(pixels == BRAIN_OUTLINE, axis=-1).sum()
    assert 0 < red < yellow  # the ventricle's outline is the shorter one, drawn inside the brain's


def test_a_local_cohort_measured_by_samseg_carries_its_derivatives(tiny_model_dir: Path, tmp_path: Path) -> None:
    """write_cohort with SAMSEG (a stand-in run_samseg here; the real one runs in tests/service/test_measuring.py):
    label maps and volumes in derivatives/samseg, the measurement in each sidecar and participants.tsv, every
    file in SHA256SUMS."""
    import csv

    from models.cohort.design import CohortDesign, design_subjects
    from models.dataset.segmentation import Label, Samseg
    from models.dataset.writer import write_cohort
    from models.inference.pipeline import BrainLDMPipeline

    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    subjects = design_subjects(CohortDesign(2, seed=1), pipeline.config.conditioning)
    samseg = Samseg(stand_in(tmp_path, "ok"), "0.4a0", (Label(4, "Left-Lateral-Ventricle", "#781286"),))
    out = write_cohort(pipeline, subjects, tmp_path / "cohort", num_inference_steps=2, samseg=samseg)
    rows = list(csv.DictReader((out / "participants.tsv").open(), delimiter="\t"))
    expected = segmented_volumes(read_samseg_stats(STATS.read_text())).measurement()
    assert {r["measure"] for r in rows} == {"samseg"}
    assert {float(r["measured_ventricular_volume_mm3"]) for r in rows} == {expected.ventricular_volume_mm3}
    for row in rows:
        pid = row["participant_id"]
        image = nib.load(out / pid / "anat" / f"{pid}_T1w.nii.gz")
        assert np.array_equal(nib.load(out / dseg_path(pid)).affine, image.affine)
        assert json.loads((out / pid / "anat" / f"{pid}_T1w.json").read_text())["Measured"]["measure"] == "samseg"
    listed = {line.split()[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert {dseg_path("sub-000001"), volumes_path("sub-000002"), "derivatives/samseg/dseg.tsv"} <= listed


def test_a_subject_samseg_cannot_segment_is_kept_not_measured(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """write_cohort with a SAMSEG that fails (killed, or an image it cannot read): the cohort is still written,
    every subject kept with its image and sidecar but no measurement or derivatives, each failure logged."""
    import csv

    from models.cohort.design import CohortDesign, design_subjects
    from models.dataset.segmentation import Label, Samseg
    from models.dataset.writer import write_cohort
    from models.inference.pipeline import BrainLDMPipeline

    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    subjects = design_subjects(CohortDesign(2, seed=1), pipeline.config.conditioning)
    samseg = Samseg(stand_in(tmp_path, "fail"), "0.4a0", (Label(4, "Left-Lateral-Ventricle", "#781286"),))
    with caplog.at_level("WARNING", logger="models.dataset.writer"):
        out = write_cohort(pipeline, subjects, tmp_path / "cohort", num_inference_steps=2, samseg=samseg,
                           max_attempts=3)  # fmt: skip
    rows = list(csv.DictReader((out / "participants.tsv").open(), delimiter="\t"))
    assert [r["participant_id"] for r in rows] == ["sub-000001", "sub-000002"]
    assert all(r.get("measured_ventricular_volume_mm3", "n/a") in ("", "n/a") for r in rows), rows
    for pid in ("sub-000001", "sub-000002"):
        assert "Measured" not in json.loads((out / pid / "anat" / f"{pid}_T1w.json").read_text())
        assert not (out / dseg_path(pid)).exists()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "SAMSEG could not segment sub-000001",
        "SAMSEG could not segment sub-000002",
    ]
    assert "exited with code 3" in caplog.records[0].getMessage()
    assert (out / "SHA256SUMS").is_file()


def seeds_by_parity(parities: list[str], count: int, max_attempts: int) -> list[int]:
    """The first ``count`` seeds whose attempts' seeds (:func:`attempt_seed`, 1..``max_attempts``) have the given
    parities, one pattern per subject: e.g. ``"o"`` passes the seed-parity stand-in at once, ``"eo"`` at the second
    attempt, ``"eee"`` never."""
    from models.cohort.design import attempt_seed

    found = []
    for pattern in parities:
        seed = 100
        while True:
            seed += 1
            parity = "".join("o" if attempt_seed(seed, k) % 2 else "e" for k in range(1, max_attempts + 1))
            if parity.startswith(pattern) and seed not in found:
                found.append(seed)
                break
    assert len(found) == count
    return found


def test_a_local_samseg_cohort_regenerates_outside_tolerance(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`sample --qc samseg --max-attempts 3` (write_cohort; the seed-parity stand-in passes odd seeds): a subject
    is segmented, sampled again alone with its next attempt's seed while outside tolerance, and the first passing
    attempt is kept, else the last; participants.tsv records the attempt and its seed, which regenerates it."""
    import csv

    from models.cohort.conditioning import Covariates
    from models.cohort.design import SubjectSpec, attempt_seed
    from models.dataset.bids import SamplerSettings, t1w_path
    from models.dataset.segmentation import Label, Samseg
    from models.dataset.writer import subject_files, write_cohort
    from models.inference.pipeline import BrainLDMPipeline

    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    wanted = Covariates("F", 70.0, STAND_IN_MEASURED.ventricular_volume_mm3, STAND_IN_MEASURED.brain_volume_mm3)
    seeds = seeds_by_parity(["o", "eo", "eee"], 3, 3)
    subjects = [SubjectSpec(f"sub-00000{i + 1}", wanted, seed) for i, seed in enumerate(seeds)]
    samseg = Samseg(stand_in(tmp_path, "seed-parity"), "0.4a0", (Label(4, "Left-Lateral-Ventricle", "#781286"),))
    out = write_cohort(pipeline, subjects, tmp_path / "cohort", num_inference_steps=2, batch_size=3, samseg=samseg,
                       qc_tolerance=0.05, max_attempts=3)  # fmt: skip
    rows = list(csv.DictReader((out / "participants.tsv").open(), delimiter="\t"))
    assert [(r["attempt"], r["qc"]) for r in rows] == [("1", "pass"), ("2", "pass"), ("3", "outside tolerance")]
    assert [int(r["seed"]) for r in rows] == [seeds[0], attempt_seed(seeds[1], 2), attempt_seed(seeds[2], 3)]
    doubled = 2 * STAND_IN_MEASURED.ventricular_volume_mm3
    assert float(rows[2]["measured_ventricular_volume_mm3"]) == pytest.approx(doubled, abs=0.2)
    sidecar = json.loads((out / "sub-000003" / "anat" / "sub-000003_T1w.json").read_text())
    assert sidecar["Attempt"] == 3 and sidecar["Seed"] == attempt_seed(seeds[2], 3)
    # a later attempt was sampled alone: its row regenerates it byte for byte
    regenerated = SubjectSpec("sub-000002", wanted, int(rows[1]["seed"]))
    (again,) = pipeline([wanted], [regenerated.seed], num_inference_steps=2, batch_size=1)
    settings = SamplerSettings("ddim", 2, 0.0, 1, "float32", pipeline.execution)
    _, files = subject_files(pipeline.config, regenerated, again, settings, "cpu")
    path = t1w_path("sub-000002")
    assert files[path] == (out / path).read_bytes()
