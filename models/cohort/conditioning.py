"""Conditioning covariates in physical units and their min-max normalisation.

Pinaya et al. 2022 (arXiv:2209.07162, section 2.1) condition the model on four covariates, each min-max
normalised with the ranges of the UK Biobank training cohort, in the order [sex, age, ventricular volume,
brain volume]:

- sex: F = 0, M = 1;
- age in years, 44-82;
- volume of ventricular cerebrospinal fluid in mm3 (UK Biobank data-field 25004), 6995.68-171375.0;
- brain volume normalised for head size in mm3 (UK Biobank data-field 25009), 1144240-1793910.

Values outside the training range make the model extrapolate (the paper's Fig. 4 shows normalised values
from -0.5 to 1.9); they are refused unless the caller asks for extrapolation, and even then bounded there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from models.errors import ConditioningError

Sex = Literal["F", "M"]

#: The bounds, in normalised units, that extrapolation may reach (the paper's Fig. 4 range).
EXTRAPOLATION_BOUNDS: tuple[float, float] = (-0.5, 1.9)

#: Covariate field names, in the order of the model's conditioning vector (sex first).
FIELDS: tuple[str, ...] = ("sex", "age", "ventricular_volume_mm3", "brain_volume_mm3")

#: How an out-of-range value is allowed, in the API's words (the CLI says ``--extrapolate``: see
#: :func:`brainsynth.arguments.cli_message`).
EXTRAPOLATE_HINT = "set extrapolate to true to go beyond it"


class CovariateRange(BaseModel):
    """The min-max range of one continuous covariate, in physical units."""

    model_config = ConfigDict(frozen=True)

    min: float
    max: float
    unit: str
    description: str

    @model_validator(mode="after")
    def _ordered(self) -> CovariateRange:
        if not self.max > self.min:
            raise ValueError(f"range max ({self.max}) must exceed min ({self.min})")
        return self

    def normalise(self, value: float) -> float:
        """Min-max normalise ``value`` (training range -> [0, 1])."""
        return (value - self.min) / (self.max - self.min)

    def denormalise(self, normalised: float) -> float:
        """Inverse of :meth:`normalise`."""
        return self.min + normalised * (self.max - self.min)


class ConditioningRanges(BaseModel):
    """Per-model covariate ranges; each model directory carries its own."""

    model_config = ConfigDict(frozen=True)

    age: CovariateRange
    ventricular_volume_mm3: CovariateRange
    brain_volume_mm3: CovariateRange

    def covariate(self, field: str) -> CovariateRange:
        """The range of a continuous covariate by field name."""
        return getattr(self, field)

    def documented(self) -> dict[str, dict[str, float | str]]:
        """Each continuous covariate's min, max, unit and description, as the API and ``brainsynth models``
        list them."""
        return {field: self.covariate(field).model_dump() for field in type(self).model_fields}


#: The UK Biobank ranges of the paper (section 2.1).
UKB_RANGES = ConditioningRanges(
    age=CovariateRange(min=44.0, max=82.0, unit="years", description="age at scan"),
    ventricular_volume_mm3=CovariateRange(
        min=6995.68,
        max=171375.0,
        unit="mm3",
        description="volume of ventricular cerebrospinal fluid (UK Biobank data-field 25004)",
    ),
    brain_volume_mm3=CovariateRange(
        min=1144240.0,
        max=1793910.0,
        unit="mm3",
        description="brain volume normalised for head size (UK Biobank data-field 25009)",
    ),
)


@dataclass(frozen=True)
class Covariates:
    """One subject's conditioning in physical units."""

    sex: Sex
    age: float
    ventricular_volume_mm3: float
    brain_volume_mm3: float


def normalise(
    covariates: Covariates, ranges: ConditioningRanges, *, extrapolate: bool = False
) -> tuple[float, float, float, float]:
    """Map physical covariates to the model's conditioning vector [sex, age, ventricles, brain].

    Args:
        covariates: the subject's covariates in physical units.
        ranges: the model's training ranges.
        extrapolate: allow values outside the training range, up to :data:`EXTRAPOLATION_BOUNDS`
            in normalised units.

    Raises:
        ConditioningError: a value is missing, not finite, or out of range; the error names the field
            and the allowed range in physical units.
    """
    if covariates.sex not in ("F", "M"):
        raise ConditioningError("sex", f"must be 'F' or 'M', got {covariates.sex!r}")
    vector = [0.0 if covariates.sex == "F" else 1.0]
    lo, hi = EXTRAPOLATION_BOUNDS
    for field in FIELDS[1:]:
        value = getattr(covariates, field)
        spec = ranges.covariate(field)
        if not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
            raise ConditioningError(field, f"must be a finite number in {spec.unit}, got {value!r}")
        scaled = spec.normalise(float(value))
        if extrapolate:
            if not lo <= scaled <= hi:
                raise ConditioningError(
                    field,
                    f"{value} {spec.unit} is beyond the extrapolation limit "
                    f"{spec.denormalise(lo):g}-{spec.denormalise(hi):g} {spec.unit} "
                    f"(normalised {lo} to {hi})",
                )
        elif not 0.0 <= scaled <= 1.0:
            raise ConditioningError(
                field,
                f"{value} {spec.unit} is outside the training range {spec.min:g}-{spec.max:g} {spec.unit}; "
                + EXTRAPOLATE_HINT,
            )
        vector.append(scaled)
    return vector[0], vector[1], vector[2], vector[3]
