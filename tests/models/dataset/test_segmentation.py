"""SAMSEG's label volumes as the conditioning's two measures, on the stats of a real SAMSEG run (a demo
subject at 4 mm; `run_samseg --threads 2`, 3 min 45 s here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.dataset.segmentation import (
    BRAIN_LABELS,
    VENTRICLE_LABELS,
    SegmentationError,
    read_samseg_stats,
    segmented_volumes,
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
