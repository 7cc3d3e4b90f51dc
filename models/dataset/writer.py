"""Writing a cohort as a BIDS dataset: a subject's files (shared with the worker) and the on-disk writer.

Who the cohort contains is decided by :mod:`models.cohort.design`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.catalogue.config import ModelConfig
from models.cohort.conditioning import normalise
from models.cohort.design import SubjectSpec, attempt_seed
from models.cohort.nifti import OutputDType, nifti_gz_bytes, to_nifti
from models.dataset.bids import (
    DEFAULT_COHORT_NAME,
    DEFAULT_QC_TOLERANCE,
    MANIFEST,
    QC_PASS,
    Measurement,
    SamplerSettings,
    SubjectRecord,
    dataset_files,
    dumps,
    manifest,
    measured_sidecar,
    require_empty_folder,
    sidecar_path,
    t1w_path,
    t1w_sidecar,
)
from models.dataset.qc import qc_files
from models.dataset.segmentation import Samseg, SegmentationError
from models.inference.pipeline import BrainLDMPipeline, ProgressCallback, SubjectSample

_log = logging.getLogger(__name__)

#: Measures a generated volume on the model grid: (ventricular, brain) volume in mm3 (:mod:`models.evaluation`).
VolumeMeasure = Callable[[np.ndarray], tuple[float, float]]


def measurement_of(
    measure: VolumeMeasure, volume: np.ndarray, name: str = "probe", tolerance: float = DEFAULT_QC_TOLERANCE
) -> Measurement:
    """A generated volume's two volumes, measured by ``measure`` (named ``name``), rounded to 0.1 mm3."""
    ventricles, brain = measure(volume)
    return Measurement(round(ventricles, 1), round(brain, 1), name, tolerance)


@dataclass(frozen=True)
class Accepted:
    """A subject as kept after regeneration: the attempt's spec (its seed), sample, measurement and number."""

    spec: SubjectSpec
    sample: SubjectSample
    measurement: Measurement
    attempt: int = 1


def regenerate_outside_tolerance(
    pipeline: BrainLDMPipeline,
    spec: SubjectSpec,
    sample: SubjectSample,
    measure: VolumeMeasure,
    *,
    max_attempts: int,
    sampler: str,
    num_inference_steps: int,
    measure_name: str = "probe",
    tolerance: float = DEFAULT_QC_TOLERANCE,
    extrapolate: bool = False,
) -> Accepted:
    """Measure a generated subject; while it is outside ``tolerance`` and attempts are left, sample it again
    alone (batch size 1, its guidance scale) with the next attempt's seed (:func:`models.cohort.design.attempt_seed`).
    The first attempt that passes is kept; when none does, the closest one (smallest largest relative error), flagged.
    Retrying narrows the cohort towards what the measure reads as the request (README, "Tolerance and
    regeneration")."""
    first_seed = spec.seed
    kept = Accepted(spec, sample, measurement_of(measure, sample.volume, measure_name, tolerance))
    best = kept
    while kept.measurement.qc(spec.covariates) != QC_PASS and kept.attempt < max_attempts:
        attempt = kept.attempt + 1
        spec = replace(spec, seed=attempt_seed(first_seed, attempt))
        (sample,) = pipeline([spec.covariates], [spec.seed], sampler=sampler, num_inference_steps=num_inference_steps,
                             guidance=sample.guidance, batch_size=1, extrapolate=extrapolate)  # fmt: skip
        kept = Accepted(spec, sample, measurement_of(measure, sample.volume, measure_name, tolerance), attempt)
        if kept.measurement.error(spec.covariates) < best.measurement.error(spec.covariates):
            best = kept
    return kept if kept.measurement.qc(spec.covariates) == QC_PASS else best


def subject_files(
    config: ModelConfig,
    spec: SubjectSpec,
    sample: SubjectSample,
    settings: SamplerSettings,
    device: str,
    measurement: Measurement | None = None,
    attempt: int = 1,
) -> tuple[SubjectRecord, dict[str, bytes]]:
    """A generated subject's BIDS files (relative path -> bytes): the T1w NIfTI, then its sidecar (with the
    volumes measured back on the image and its QC flag, when ``measurement`` is given, and which attempt made
    it; ``spec`` holds that attempt's seed)."""
    record = SubjectRecord(
        spec.participant_id, spec.covariates, sample.conditioning, spec.seed, settings.name, settings.steps,
        measurement, attempt, sample.guidance,
    )  # fmt: skip
    image = to_nifti(
        sample.volume,
        np.asarray(config.affine),
        settings.dtype,
        description=f"synthetic {config.name} seed {spec.seed}",
    )
    sidecar = t1w_sidecar(config, record, settings, device)
    return record, {
        t1w_path(spec.participant_id): nifti_gz_bytes(image),
        sidecar_path(spec.participant_id): dumps(sidecar).encode(),
    }


def dataset_level_files(
    config: ModelConfig,
    cohort_name: str,
    records: list[SubjectRecord],
    authors: Sequence[str] | None = None,
    like_report: dict[str, Any] | None = None,
) -> dict[str, bytes]:
    """Every dataset-level file but the manifest (relative path -> bytes), for a local cohort and the service's
    finalisation alike: the BIDS files (:func:`models.dataset.bids.dataset_files`) and a measured cohort's QC
    report and scatter plot (:func:`models.dataset.qc.qc_files`)."""
    texts = dataset_files(config, cohort_name, records, authors, like_report)
    return {**{relative: text.encode() for relative, text in texts.items()}, **qc_files(records)}


def write_cohort(
    pipeline: BrainLDMPipeline,
    subjects: Sequence[SubjectSpec],
    out_dir: Path,
    *,
    sampler: str = "ddim",
    num_inference_steps: int,
    batch_size: int = 1,
    dtype: OutputDType = "float32",
    extrapolate: bool = False,
    guidance: float | None = None,
    cohort_name: str = DEFAULT_COHORT_NAME,
    authors: Sequence[str] | None = None,
    like_report: dict[str, Any] | None = None,
    measure: VolumeMeasure | None = None,
    measure_name: str = "probe",
    qc_tolerance: float = DEFAULT_QC_TOLERANCE,
    max_attempts: int = 1,
    samseg: Samseg | None = None,
    callback: ProgressCallback | None = None,
) -> Path:
    """Generate ``subjects`` and write them as a BIDS dataset in ``out_dir`` (new or empty).

    Subjects are written per batch as they finish, then the dataset-level files (the same as the service's
    archive: :func:`models.dataset.bids.dataset_files`), then ``SHA256SUMS`` of every file, last. With
    ``samseg`` (instead of ``measure``) each image is segmented as it is written, as the service's measuring
    workers do: its measurement goes into its sidecar, its label map and volumes into ``derivatives/samseg/``;
    with ``max_attempts`` > 1 a subject SAMSEG measures outside tolerance is sampled again alone with its next
    attempt's seed and segmented again, and the first passing attempt is kept, else the last; a subject SAMSEG
    cannot segment is kept not measured (logged), and the cohort goes on.
    """
    out_dir = require_empty_folder(out_dir)
    config = pipeline.config
    config.guidance_scale(guidance)  # fail before any compute
    for spec in subjects:
        normalise(spec.covariates, config.conditioning, extrapolate=extrapolate)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = SamplerSettings(sampler, num_inference_steps, 0.0, batch_size, dtype, pipeline.execution)
    records: list[SubjectRecord] = []
    total = len(subjects) * (num_inference_steps + 1)
    done_before = 0
    for start in range(0, len(subjects), batch_size):
        chunk = subjects[start : start + batch_size]

        def forward(done: int, _total: int, offset: int = done_before) -> None:
            if callback is not None:
                callback(offset + done, total)

        samples = pipeline(
            [s.covariates for s in chunk],
            [s.seed for s in chunk],
            sampler=sampler,
            num_inference_steps=num_inference_steps,
            guidance=guidance,
            batch_size=batch_size,
            extrapolate=extrapolate,
            callback=forward,
        )
        done_before += len(chunk) * (num_inference_steps + 1)
        for spec, sample in zip(chunk, samples, strict=True):
            measurement, attempt, made_by = None, 1, settings
            if measure is not None:
                kept = regenerate_outside_tolerance(
                    pipeline, spec, sample, measure, max_attempts=max_attempts, sampler=sampler,
                    num_inference_steps=num_inference_steps, measure_name=measure_name, tolerance=qc_tolerance,
                    extrapolate=extrapolate,
                )  # fmt: skip
                spec, sample, measurement, attempt = kept.spec, kept.sample, kept.measurement, kept.attempt
                made_by = settings if attempt == 1 else replace(settings, batch_size=1)
            record, files = subject_files(config, spec, sample, made_by, str(pipeline.device), measurement, attempt)
            if samseg is not None:
                pid, first_seed = spec.participant_id, spec.seed
                while True:
                    try:
                        _, measured, derived = samseg.segment(pid, files[t1w_path(pid)], qc_tolerance)
                    except SegmentationError as err:  # kept, not measured, as the service's measuring workers do
                        _log.warning("SAMSEG could not segment %s (attempt %d): kept not measured: %s", pid,
                                     attempt, str(err)[:300])  # fmt: skip
                        measured = None
                        break
                    if measured.qc(spec.covariates) == QC_PASS or attempt >= max_attempts:
                        break  # the first passing attempt, else the last (as the service's measuring workers)
                    attempt += 1
                    spec = replace(spec, seed=attempt_seed(first_seed, attempt))
                    (sample,) = pipeline([spec.covariates], [spec.seed], sampler=sampler,
                                         num_inference_steps=num_inference_steps, guidance=sample.guidance,
                                         batch_size=1, extrapolate=extrapolate)  # fmt: skip
                    made_by = replace(settings, batch_size=1)
                    record, files = subject_files(config, spec, sample, made_by, str(pipeline.device), None, attempt)
                if measured is not None:
                    record = replace(record, measurement=measured)
                    sidecar = measured_sidecar(pid, json.loads(files[sidecar_path(pid)]), measured)
                    image = files[t1w_path(pid)]
                    files = {t1w_path(pid): image, **derived, sidecar_path(pid): dumps(sidecar).encode()}  # last
            for relative, content in files.items():  # the sidecar comes last: it marks the subject done
                (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                (out_dir / relative).write_bytes(content)
            records.append(record)
    dataset = dataset_level_files(config, cohort_name, records, authors, like_report)
    for relative, content in {**dataset, **(samseg.dataset_files() if samseg else {})}.items():
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / relative).write_bytes(content)
    digests = [
        (path.relative_to(out_dir).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest())
        for path in out_dir.rglob("*")
        if path.is_file()
    ]
    (out_dir / MANIFEST).write_text(manifest(digests))
    return out_dir
