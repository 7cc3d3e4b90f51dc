"""Task payloads exchanged by name between the API and the workers (JSON; pydantic only, no torch)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.cohort.conditioning import Covariates
from models.cohort.design import MAX_ATTEMPTS_LIMIT, PARTICIPANT_LABEL, OutputDType, SamplerName, SubjectSpec
from models.dataset.bids import DEFAULT_QC_TOLERANCE

#: Celery task names: the API sends tasks by these names and never imports the worker code.
GENERATE_SUBJECTS = "cohort.generate_subjects"
FINALIZE_COHORT = "cohort.finalize"
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
    #: measure the stored image back (``probe``: the model's volume probe, in the generating worker;
    #: ``samseg``: FreeSurfer's SAMSEG, by a measuring worker once the image is stored)
    qc: Literal["none", "probe", "samseg"] = "none"
    qc_tolerance: float = Field(DEFAULT_QC_TOLERANCE, gt=0, le=1)
    #: attempts at a subject measured outside tolerance (qc probe): 1 = keep the first
    max_attempts: int = Field(1, ge=1, le=MAX_ATTEMPTS_LIMIT)

    @classmethod
    def from_spec(cls, spec: SubjectSpec, **cohort: Any) -> SubjectJob:
        """The job for a designed subject; ``cohort`` holds the fields every subject of its cohort shares
        (tenant, cohort_id, model, sampler, steps, dtype, extrapolate, qc, qc_tolerance, max_attempts)."""
        c = spec.covariates
        return cls(participant_id=spec.participant_id, sex=c.sex, age=c.age,
                   ventricular_volume_mm3=c.ventricular_volume_mm3, brain_volume_mm3=c.brain_volume_mm3,
                   seed=spec.seed, **cohort)  # fmt: skip

    def spec(self) -> SubjectSpec:
        """The subject as the model layer designs and samples it."""
        covariates = Covariates(self.sex, self.age, self.ventricular_volume_mm3, self.brain_volume_mm3)
        return SubjectSpec(self.participant_id, covariates, self.seed)


class SubjectBatch(BaseModel):
    """A few subjects of one cohort sampled together in one task (one UNet batch): batching is the main
    speed-up on any device, and a task stays far shorter than the visibility timeout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subjects: list[SubjectJob] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _one_cohort_one_setting(self) -> SubjectBatch:
        first = self.subjects[0]
        shared = ("tenant", "cohort_id", "model", "sampler", "steps", "dtype", "extrapolate", "qc", "qc_tolerance",
                  "max_attempts")  # fmt: skip
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


class MeasureJob(BaseModel):
    """Measure one stored subject with SAMSEG: its label map and volumes into the cohort's derivative dataset,
    then the measurement and QC flag into its T1w sidecar (written last: the subject is measured)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    cohort_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    model: str
    participant_id: str = Field(pattern=f"^{PARTICIPANT_LABEL}$")
    qc_tolerance: float = Field(DEFAULT_QC_TOLERANCE, gt=0, le=1)

    @classmethod
    def of(cls, job: SubjectJob) -> MeasureJob:
        return cls(tenant=job.tenant, cohort_id=job.cohort_id, model=job.model, participant_id=job.participant_id,
                   qc_tolerance=job.qc_tolerance)  # fmt: skip
