"""Cohort designs: seeded, within the model's ranges, and refused with the offending field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.cohort.conditioning import UKB_RANGES
from models.cohort.design import (
    DEFAULT_STEPS,
    SAMPLER_TABLE,
    SAMPLERS,
    CohortDesign,
    Span,
    default_steps_text,
    design_subjects,
    is_participant_label,
    read_subjects_tsv,
    sampler_names_text,
)
from models.dataset.bids import t1w_path
from models.errors import ConditioningError


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


@pytest.mark.parametrize("pid", ["../../evil", "01", "sub-01_a", "sub-", "sub-01/anat", "sub-Ü1"])
def test_a_subjects_file_names_subjects_by_bids_labels_only(pid: str, tmp_path: Path) -> None:
    """A participant_id becomes a folder and file names: anything but sub-<letters and digits> is refused,
    naming the row, before anything is written (../../evil once wrote two folders above the output)."""
    table = tmp_path / "subjects.tsv"
    table.write_text(
        "participant_id\tage\tsex\tventricular_volume_mm3\tbrain_volume_mm3\tseed\n"
        f"sub-ok1\t60\tF\t30000\t1500000\t1\n{pid}\t61\tM\t30000\t1500000\t2\n"
    )
    with pytest.raises(ConditioningError, match=r"row 3: participant_id .* is not a BIDS label"):
        read_subjects_tsv(table, 0)
    with pytest.raises(ValueError, match="not a BIDS label"):
        t1w_path(pid)
    assert is_participant_label("sub-ok1") and is_participant_label("sub-000001")


def test_a_subjects_file_may_not_ask_for_the_same_brain_twice(tmp_path: Path) -> None:
    """Two rows with the same seed and covariates are the same image twice: refused as the API refuses them."""
    table = tmp_path / "subjects.tsv"
    row = "60\tF\t30000\t1500000\t7\n"
    table.write_text("age\tsex\tventricular_volume_mm3\tbrain_volume_mm3\tseed\n" + row + "61\tF\t30000\t1500000\t7\n"
                     + row)  # fmt: skip
    with pytest.raises(ConditioningError, match=r"row 4 repeats row 2 \(same seed and covariates"):
        read_subjects_tsv(table, 0)


def test_the_sampler_table_is_the_one_source_of_sampler_words() -> None:
    assert tuple(SAMPLER_TABLE) == SAMPLERS and {n: i.default_steps for n, i in SAMPLER_TABLE.items()} == DEFAULT_STEPS
    assert sampler_names_text() == "ddim, pndm, ddpm or dpmpp2m"
    assert default_steps_text() == "50 for ddim and pndm, 1000 for ddpm, 15 for dpmpp2m"
