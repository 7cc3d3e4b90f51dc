"""HTTP request and response bodies of API v1 (pydantic; every field in physical units)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.cohort.design import (
    MAX_ATTEMPTS_LIMIT,
    MAX_GUIDANCE,
    SEED_MASK,
    OutputDType,
    QcMeasure,
    SamplerName,
    default_steps_text,
    sampler_names_text,
    unprintable,
)

#: Unknown fields refused; no coercion: "3", 3.0 or true are not an integer, "yes" is not a boolean.
_STRICT = ConfigDict(extra="forbid", strict=True)


class CovariateSpec(BaseModel):
    """A fixed value (``{"value": 65}``) or a uniform range (``{"min": 50, "max": 80}``)."""

    model_config = _STRICT

    value: float | None = Field(
        None, allow_inf_nan=False, description="every subject gets this value (the covariate's unit)"
    )
    min: float | None = Field(
        None, allow_inf_nan=False, description="lower end of a uniform range (the covariate's unit)"
    )
    max: float | None = Field(
        None, allow_inf_nan=False, description="upper end of a uniform range (the covariate's unit)"
    )

    @model_validator(mode="after")
    def _one_form(self) -> CovariateSpec:
        if self.value is not None:
            if self.min is not None or self.max is not None:
                raise ValueError("give either value or min and max, not both")
        elif self.min is None or self.max is None:
            raise ValueError("give value, or both min and max")
        elif self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        if self.value is not None:
            return self.value, self.value
        return self.min, self.max  # type: ignore[return-value]


class SexSpec(BaseModel):
    """``{"female_fraction": 0.5}`` (exact counts, shuffled) or ``{"value": "F"}``."""

    model_config = _STRICT

    female_fraction: float | None = Field(None, ge=0.0, le=1.0, description="share of female subjects, 0-1")
    value: Literal["F", "M"] | None = Field(None, description="every subject female (F) or male (M)")

    @model_validator(mode="after")
    def _one_form(self) -> SexSpec:
        if (self.female_fraction is None) == (self.value is None):
            raise ValueError("give exactly one of female_fraction or value")
        return self

    @property
    def fraction(self) -> float:
        if self.value is not None:
            return 1.0 if self.value == "F" else 0.0
        return float(self.female_fraction)  # type: ignore[arg-type]


class CovariatesIn(BaseModel):
    """How to draw each covariate; an omitted one spans the model's training range (sex: half female)."""

    model_config = _STRICT

    age: CovariateSpec | None = Field(None, description="age in years (GET /v1/models gives each model's range)")
    sex: SexSpec | None = Field(None, description="sex: a female fraction or one value")
    ventricular_volume_mm3: CovariateSpec | None = Field(None, description="ventricular volume in mm3")
    brain_volume_mm3: CovariateSpec | None = Field(None, description="brain volume in mm3")


class SubjectIn(BaseModel):
    """One explicitly listed subject (years, F/M, mm3); ``seed`` regenerates a subject of an earlier cohort."""

    model_config = _STRICT

    age: float = Field(allow_inf_nan=False, description="years")
    sex: Literal["F", "M"] = Field(description="F or M")
    ventricular_volume_mm3: float = Field(allow_inf_nan=False, description="mm3")
    brain_volume_mm3: float = Field(allow_inf_nan=False, description="mm3")
    seed: int | None = Field(None, ge=0, le=SEED_MASK, description="the subject's seed (from participants.tsv)")


class ReferenceRow(BaseModel):
    """One row of a real study's participants table; a missing or null value leaves the row out of the
    columns that need it."""

    model_config = _STRICT

    age: float | None = Field(None, allow_inf_nan=False, description="years")
    sex: Literal["F", "M"] | None = Field(None, description="F or M")
    ventricular_volume_mm3: float | None = Field(None, allow_inf_nan=False, description="mm3")
    brain_volume_mm3: float | None = Field(None, allow_inf_nan=False, description="mm3")


class LikeIn(BaseModel):
    """Draw the cohort like a real one: covariates from a Gaussian copula fitted to these rows (their
    marginals and rank correlations), clipped to the model's range. Covariates the rows lack are drawn
    uniformly over the model's range."""

    model_config = _STRICT

    rows: list[ReferenceRow] = Field(
        min_length=1, description="the reference table (the server's limit applies: 413 past it)"
    )


class SamplerIn(BaseModel):
    model_config = _STRICT

    name: SamplerName = Field("ddim", description=sampler_names_text())
    steps: int | None = Field(None, ge=1, description=f"default: {default_steps_text()}")


class CohortRequest(BaseModel):
    """``POST /v1/cohorts``: either ``n_subjects`` (+ optional ``covariates``) or a ``subjects`` list."""

    model_config = _STRICT

    model: str = Field(min_length=1, max_length=128, description="a model from GET /v1/models")
    name: str | None = Field(None, max_length=200, description="dataset name in dataset_description.json")
    authors: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1, max_length=50, description="dataset authors in dataset_description.json"
    )
    n_subjects: int | None = Field(None, ge=1, description="cohort size (the server's limit applies)")
    seed: int | None = Field(None, ge=0, le=SEED_MASK, description="cohort seed; drawn by the server if omitted")
    covariates: CovariatesIn | None = None
    like: LikeIn | None = Field(None, description="a reference table to draw the covariates like (with n_subjects)")
    subjects: list[SubjectIn] | None = Field(None, min_length=1, description="explicit subjects instead of n_subjects")
    sampler: SamplerIn = Field(default_factory=SamplerIn)
    dtype: OutputDType = Field("float32", description="NIfTI data type: float32 (0-1) or uint8 (0-255)")
    extrapolate: bool = Field(False, description="allow covariates outside the training range (to -0.5..1.9)")
    qc: QcMeasure | None = Field(
        None,
        description="measure each subject's volumes back: probe (the model's volume probe, seconds; the default "
        "where the model has one, else none), samseg (FreeSurfer's SAMSEG, by the measuring workers, minutes a "
        "subject; 422 where the server runs none), none",
    )
    qc_tolerance: float | None = Field(
        None, gt=0, le=1, description="relative difference per volume that still passes QC (default 0.25)"
    )
    guidance: float | None = Field(
        None, ge=0, le=MAX_GUIDANCE,
        description="classifier-free guidance scale w (eps = eps_null + w (eps_cond - eps_null)): larger follows the "
        "conditioning more closely; default the model's (GET /v1/models: guidance.default); a model trained "
        "without condition dropout takes 1 only (422 otherwise)",
    )  # fmt: skip
    max_attempts: int | None = Field(
        None, ge=1, le=MAX_ATTEMPTS_LIMIT,
        description="generate a subject measured outside qc_tolerance again with its next attempt's seed, up to "
        "this many attempts in all, then keep it flagged (default 1: no regeneration; needs qc probe or samseg)",
    )  # fmt: skip

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str | None) -> str | None:
        if name is not None and (found := unprintable(name)):
            raise ValueError(f"must not contain control or invisible characters (found {found})")
        return name

    @field_validator("authors")
    @classmethod
    def _printable_authors(cls, authors: list[str] | None) -> list[str] | None:
        for author in authors or []:
            if found := unprintable(author):
                raise ValueError(f"must not contain control or invisible characters (found {found})")
        return authors

    @model_validator(mode="after")
    def _one_form(self) -> CohortRequest:
        if self.like is not None and (self.covariates is not None or self.subjects is not None):
            raise ValueError("give like or covariates or a subjects list, not two of them")
        if self.subjects is None:
            if self.n_subjects is None:
                raise ValueError("give n_subjects (with optional covariates or like) or a subjects list")
        else:
            if self.covariates is not None:
                raise ValueError("give covariates or a subjects list, not both")
            if self.n_subjects is not None and self.n_subjects != len(self.subjects):
                raise ValueError(
                    f"n_subjects ({self.n_subjects}) differs from the subjects listed ({len(self.subjects)})"
                )
        return self


class Progress(BaseModel):
    done: int = Field(description="subjects whose images are stored")
    total: int
    measured: int = Field(
        0, description="subjects measured back (qc probe: as they are stored; qc samseg: by the measuring workers)"
    )


class CohortStatus(BaseModel):
    """``GET /v1/cohorts/{id}``."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    progress: Progress
    created_at: str
    updated_at: str
    request: dict
    error: str | None = None
    links: dict[str, str]


class CohortPage(BaseModel):
    cohorts: list[CohortStatus]
    next_page_token: str | None = None


class SubjectOut(BaseModel):
    participant_id: str
    age: float
    sex: Literal["F", "M"]
    ventricular_volume_mm3: float
    brain_volume_mm3: float
    seed: int
    status: Literal["stored", "pending", "not_run"]
    url: str | None = Field(None, description="presigned GET of the T1w NIfTI (short-lived)")
    sidecar_url: str | None = None
    expires_in_s: int | None = None


class SubjectPage(BaseModel):
    cohort_id: str
    subjects: list[SubjectOut]
    next_page_token: str | None = Field(None, description="pass as ?page_token= for the next page; null: last page")


class LinkTokenOut(BaseModel):
    """``POST /v1/cohorts/{id}/link-token``: a short-lived token for this cohort's read-only streams."""

    token: str = Field(description="pass as ?token= to /events, /archive and the subjects' preview PNGs")
    cohort_id: str
    expires_at: str = Field(description="ISO 8601 UTC; a stream opened before then stays open")
    expires_in_s: int
