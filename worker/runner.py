"""Plain logic of a subject task: sample -> BIDS files -> object storage; idempotent by key."""

from __future__ import annotations

from collections.abc import Callable

from models.bids import SamplerSettings, sidecar_path, t1w_path
from models.cohort import subject_files
from models.conditioning import Covariates
from models.design import SubjectSpec
from models.pipeline import BrainLDMPipeline
from worker.contract import SubjectJob, SubjectResult
from worker.storage import ObjectStore, cohort_prefix


def bids_prefix(job: SubjectJob) -> str:
    """Where the cohort's BIDS dataset lives in the bucket."""
    return cohort_prefix(job.tenant, job.cohort_id) + "bids/"


def generate_subject(
    job: SubjectJob, store: ObjectStore, pipeline_for: Callable[[str], BrainLDMPipeline]
) -> SubjectResult:
    """Generate and upload one subject unless its sidecar (written last) already exists.

    Keys are deterministic and the bytes depend only on the job, so a redelivered task either skips or
    rewrites identical objects: a subject is never duplicated or changed.
    """
    prefix = bids_prefix(job)
    image_key = prefix + t1w_path(job.participant_id)
    if store.exists(prefix + sidecar_path(job.participant_id)):
        return SubjectResult(participant_id=job.participant_id, image_key=image_key, skipped=True)
    pipeline = pipeline_for(job.model)
    covariates = Covariates(job.sex, job.age, job.ventricular_volume_mm3, job.brain_volume_mm3)
    sample = pipeline(
        [covariates], [job.seed], sampler=job.sampler, num_inference_steps=job.steps, extrapolate=job.extrapolate
    )[0]
    settings = SamplerSettings(job.sampler, job.steps, 0.0, 1, job.dtype)
    spec = SubjectSpec(job.participant_id, covariates, job.seed)
    _, files = subject_files(pipeline.config, spec, sample, settings, str(pipeline.device))
    for relative, content in files.items():  # NIfTI first, sidecar last
        content_type = "application/gzip" if relative.endswith(".gz") else "application/json"
        store.put_bytes(prefix + relative, content, content_type)
    return SubjectResult(participant_id=job.participant_id, image_key=image_key, skipped=False)
