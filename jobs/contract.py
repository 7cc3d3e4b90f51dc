"""Task payloads exchanged by name between the API and the workers (JSON; pydantic only, no torch)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.cohort.conditioning import Covariates
from models.cohort.design import (
    MAX_ATTEMPTS_LIMIT,
    MAX_GUIDANCE,
    PARTICIPANT_LABEL,
    OutputDType,
    SamplerName,
    SubjectSpec,
    attempt_seed,
)
from models.dataset.bids import DEFAULT_QC_TOLERANCE

#: Celery task names: the API sends tasks by these names and never imports the worker code.
GENERATE_SUBJECTS = "cohort.generate_subjects"
FINALIZE_COHORT = "cohort.finalize"
DISPATCH_BATCHES = "cohort.dispatch_batches"
MEASURE_SUBJECT = "cohort.measure_subject"
#: The measuring workers' own Celery queue (CPU, SAMSEG's environment): GPU workers never wait for a segmenter.
MEASURE_QUEUE = "measure"


class SubjectJob(BaseModel):
    """Generate one subject of one cohort and store its BIDS files under the cohort's prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    cohort_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    model: str
    participant_id: str = Field(pattern=f"^{PARTICIPANT_LABEL}$")
    sex: Literal["F", "M"]
    age: float
    ventricular_volume_mm3: float
    brain_volume_mm3: float
    seed: int = Field(ge=0, le=2**63 - 1)
    sampler: SamplerName = "ddim"
    steps: int = Field(50, ge=1, le=1000)
    dtype: OutputDType = "float32"
    extrapolate: bool = False
    #: classifier-free guidance scale, resolved by the API (the model's default when the request names none)
    guidance: float = Field(1.0, ge=0, le=MAX_GUIDANCE)
    #: measure the stored image back (``probe``: the model's volume probe, in the generating worker;
    #: ``samseg``: FreeSurfer's SAMSEG, by a measuring worker once the image is stored)
    qc: Literal["none", "probe", "samseg"] = "none"
    qc_tolerance: float = Field(DEFAULT_QC_TOLERANCE, gt=0, le=1)
    #: attempts at a subject measured outside tolerance: 1 = keep the first
    max_attempts: int = Field(1, ge=1, le=MAX_ATTEMPTS_LIMIT)
    #: which attempt this job generates: 1, or k > 1 when a measuring worker sent the subject back after SAMSEG
    #: measured attempt k - 1 outside tolerance (sampled alone with :func:`models.cohort.design.attempt_seed`)
    attempt: int = Field(1, ge=1, le=MAX_ATTEMPTS_LIMIT)

    @model_validator(mode="after")
    def _attempt_within_max(self) -> SubjectJob:
        if self.attempt > self.max_attempts:
            raise ValueError(f"attempt {self.attempt} is past max_attempts {self.max_attempts}")
        return self

    @classmethod
    def from_spec(cls, spec: SubjectSpec, **cohort: Any) -> SubjectJob:
        """The job for a designed subject; ``cohort`` holds the fields every subject of its cohort shares
        (tenant, cohort_id, model, sampler, steps, dtype, extrapolate, guidance, qc, qc_tolerance, max_attempts)."""
        c = spec.covariates
        return cls(participant_id=spec.participant_id, sex=c.sex, age=c.age,
                   ventricular_volume_mm3=c.ventricular_volume_mm3, brain_volume_mm3=c.brain_volume_mm3,
                   seed=spec.seed, **cohort)  # fmt: skip

    def spec(self) -> SubjectSpec:
        """The subject as the model layer samples this job's attempt (its seed is that attempt's)."""
        covariates = Covariates(self.sex, self.age, self.ventricular_volume_mm3, self.brain_volume_mm3)
        return SubjectSpec(self.participant_id, covariates, attempt_seed(self.seed, self.attempt))

    def next_attempt(self) -> SubjectJob | None:
        """The job generating this subject's next attempt, or ``None`` when this one is the last allowed."""
        return None if self.attempt >= self.max_attempts else self.model_copy(update={"attempt": self.attempt + 1})


class SubjectBatch(BaseModel):
    """A few subjects of one cohort sampled together in one task (one UNet batch): batching is the main
    speed-up on any device, and a task stays far shorter than the visibility timeout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subjects: list[SubjectJob] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _later_attempts_alone(self) -> SubjectBatch:
        if self.subjects[0].attempt > 1 and len(self.subjects) > 1:
            raise ValueError("a later attempt is sampled alone (batch of one), so it regenerates byte-identically")
        return self

    @model_validator(mode="after")
    def _one_cohort_one_setting(self) -> SubjectBatch:
        first = self.subjects[0]
        shared = ("tenant", "cohort_id", "model", "sampler", "steps", "dtype", "extrapolate", "guidance", "qc",
                  "qc_tolerance", "max_attempts", "attempt")  # fmt: skip
        for job in self.subjects[1:]:
            for name in shared:
                if getattr(job, name) != getattr(first, name):
                    raise ValueError(f"every subject of a batch must share {name}")
        return self


class SubjectResult(BaseModel):
    participant_id: str
    image_key: str
    outcome: Literal["stored", "already_stored", "not_run"] = Field(
        description="stored now; already stored (a redelivered task); not run (cohort canceled, failed or deleted)"
    )


class FinalizeJob(BaseModel):
    """Write a cohort's dataset-level files and its manifest once every subject has settled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    cohort_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    model: str


class DispatchJob(BaseModel):
    """Queue the next chunk of a large cohort's batches, from batch index ``start`` (:mod:`jobs.dispatch`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    cohort_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    start: int = Field(ge=0)


class MeasureJob(BaseModel):
    """Measure one stored subject with SAMSEG: its label map and volumes into the cohort's derivative dataset,
    then the measurement and QC flag into its T1w sidecar (written last: the subject is measured). ``subject``
    is the job that stored the attempt to measure; its next attempt goes back to the generating workers when
    SAMSEG measures this one outside tolerance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: SubjectJob

    @property
    def tenant(self) -> str:
        return self.subject.tenant

    @property
    def cohort_id(self) -> str:
        return self.subject.cohort_id

    @property
    def participant_id(self) -> str:
        return self.subject.participant_id

    @property
    def attempt(self) -> int:
        return self.subject.attempt

    @property
    def qc_tolerance(self) -> float:
        return self.subject.qc_tolerance
