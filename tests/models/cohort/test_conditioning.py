"""Covariates in physical units <-> the model's normalised conditioning vector."""

from __future__ import annotations

import math

import pytest

from models.cohort.conditioning import UKB_RANGES, Covariates, normalise
from models.errors import ConditioningError


def test_vector_order_and_paper_ranges() -> None:
    low = normalise(Covariates("F", 44.0, 6995.68, 1144240.0), UKB_RANGES)
    high = normalise(Covariates("M", 82.0, 171375.0, 1793910.0), UKB_RANGES)
    assert low == (0.0, 0.0, 0.0, 0.0)
    assert high == (1.0, 1.0, 1.0, 1.0)
    mid = normalise(Covariates("M", 63.0, 89185.34, 1469075.0), UKB_RANGES)
    assert mid == pytest.approx((1.0, 0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    ("covariates", "field", "range_text"),
    [
        (Covariates("F", 43.9, 30000, 1500000), "age", "44-82 years"),
        (Covariates("F", 90, 30000, 1500000), "age", "44-82 years"),
        (Covariates("F", 60, 5000, 1500000), "ventricular_volume_mm3", "6995.68-171375 mm3"),
        (Covariates("F", 60, 30000, 2_000_000), "brain_volume_mm3", "1.14424e+06-1.79391e+06 mm3"),
    ],
)
def test_out_of_range_names_field_and_range(covariates: Covariates, field: str, range_text: str) -> None:
    with pytest.raises(ConditioningError) as info:
        normalise(covariates, UKB_RANGES)
    assert info.value.field == field
    assert range_text in str(info.value)
    assert "set extrapolate to true" in str(info.value)  # the API's words; the CLI says --extrapolate


def test_extrapolation_is_explicit_and_bounded() -> None:
    big_ventricles = 6995.68 + 1.5 * (171375.0 - 6995.68)
    with pytest.raises(ConditioningError):
        normalise(Covariates("F", 60, big_ventricles, 1500000), UKB_RANGES)
    vector = normalise(Covariates("F", 60, big_ventricles, 1500000), UKB_RANGES, extrapolate=True)
    assert vector[2] == pytest.approx(1.5)
    # The paper's Fig. 4 reaches -0.5 .. 1.9 normalised; beyond that is refused even with extrapolation.
    with pytest.raises(ConditioningError) as info:
        normalise(Covariates("F", 44 + 2.0 * 38, 30000, 1500000), UKB_RANGES, extrapolate=True)
    assert info.value.field == "age"
    assert "extrapolation limit" in str(info.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, "63"])
def test_non_numbers_refused(bad: object) -> None:
    with pytest.raises(ConditioningError) as info:
        normalise(Covariates("F", bad, 30000, 1500000), UKB_RANGES)  # type: ignore[arg-type]
    assert info.value.field == "age"


def test_sex_must_be_f_or_m() -> None:
    with pytest.raises(ConditioningError) as info:
        normalise(Covariates("X", 60, 30000, 1500000), UKB_RANGES)  # type: ignore[arg-type]
    assert info.value.field == "sex"
