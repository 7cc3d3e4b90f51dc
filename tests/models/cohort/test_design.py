"""Cohort designs: seeded, within the model's ranges, and refused with the offending field named."""

from __future__ import annotations

import pytest

from models.cohort.conditioning import UKB_RANGES
from models.cohort.design import CohortDesign, Span, design_subjects
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
