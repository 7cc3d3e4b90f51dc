"""Cohort design (who to generate) and writing a cohort as a BIDS dataset on disk.

Covariates not fixed by the caller are drawn from ``numpy.random.default_rng(cohort_seed)``: age and
volumes uniformly over the requested range (default: the model's training range); sex by exact counts
(``female_fraction`` rounded) in shuffled order. Subject seeds come from
:func:`models.sampling.subject_seed`, so subject i of a cohort is the same in any batch size and can be
regenerated alone from participants.tsv.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bids import (
    SamplerSettings,
    SubjectRecord,
    dataset_description,
    dataset_readme,
    dumps,
    participant_id,
    participants_json,
    participants_tsv,
    sidecar_path,
    t1w_path,
    t1w_sidecar,
)
from models.conditioning import FIELDS, ConditioningRanges, Covariates, normalise
from models.config import ModelConfig
from models.errors import ConditioningError
from models.nifti import OutputDType, nifti_gz_bytes, to_nifti
from models.pipeline import BrainLDMPipeline, ProgressCallback, SubjectSample
from models.sampling import subject_seed

#: Most subjects one cohort may ask for.
MAX_SUBJECTS = 100_000


@dataclass(frozen=True)
class Span:
    """A covariate given as a fixed value (lo == hi) or a uniform range [lo, hi]."""

    lo: float
    hi: float

    @classmethod
    def fixed(cls, value: float) -> Span:
        return cls(value, value)


@dataclass(frozen=True)
class CohortDesign:
    """What a cohort asks for; ``None`` spans mean the model's whole training range."""

    n_subjects: int
    seed: int
    female_fraction: float = 0.5
    age: Span | None = None
    ventricular_volume_mm3: Span | None = None
    brain_volume_mm3: Span | None = None


@dataclass(frozen=True)
class SubjectSpec:
    """One subject to generate."""

    participant_id: str
    covariates: Covariates
    seed: int


def design_subjects(
    design: CohortDesign, ranges: ConditioningRanges, *, extrapolate: bool = False
) -> list[SubjectSpec]:
    """Draw every subject's covariates and seed; validates everything before anything is generated.

    Raises:
        ConditioningError: a count, fraction or range is invalid; the error names the field.
    """
    if not 1 <= design.n_subjects <= MAX_SUBJECTS:
        raise ConditioningError("n_subjects", f"must be between 1 and {MAX_SUBJECTS}, got {design.n_subjects}")
    if not 0.0 <= design.female_fraction <= 1.0:
        raise ConditioningError("female_fraction", f"must be between 0 and 1, got {design.female_fraction}")
    if design.seed < 0:
        raise ConditioningError("seed", f"must be a non-negative integer, got {design.seed}")
    spans: dict[str, Span] = {}
    for field in FIELDS[1:]:
        span = getattr(design, field)
        if span is None:
            spec = ranges.covariate(field)
            span = Span(spec.min, spec.max)
        if not (math.isfinite(span.lo) and math.isfinite(span.hi)) or span.lo > span.hi:
            raise ConditioningError(
                field, f"range must be two finite numbers with low <= high, got {span.lo}-{span.hi}"
            )
        # Both ends must be valid conditioning: checked with the sex fixed, as sex does not affect ranges.
        for end in (span.lo, span.hi):
            probe = {f: (end if f == field else ranges.covariate(f).min) for f in FIELDS[1:]}
            normalise(Covariates(sex="F", **probe), ranges, extrapolate=extrapolate)
        spans[field] = span

    rng = np.random.default_rng(design.seed)
    n = design.n_subjects
    n_female = round(n * design.female_fraction)
    sexes = np.array(["F"] * n_female + ["M"] * (n - n_female))
    rng.shuffle(sexes)
    draws = {field: rng.uniform(span.lo, span.hi, size=n) for field, span in spans.items()}
    subjects = []
    for i in range(n):
        covariates = Covariates(
            sex=str(sexes[i]),  # type: ignore[arg-type]
            age=round(float(draws["age"][i]), 2),
            ventricular_volume_mm3=round(float(draws["ventricular_volume_mm3"][i]), 1),
            brain_volume_mm3=round(float(draws["brain_volume_mm3"][i]), 1),
        )
        subjects.append(SubjectSpec(participant_id(i), covariates, subject_seed(design.seed, i)))
    return subjects


def read_subjects_tsv(path: Path, cohort_seed: int) -> list[SubjectSpec]:
    """Subjects listed in a TSV with columns age, sex, ventricular_volume_mm3, brain_volume_mm3 and,
    optionally, participant_id and seed (a participants.tsv of an earlier cohort regenerates it).

    Raises:
        ConditioningError: a column is missing or a value is not a number; names the row and column.
    """
    path = Path(path)
    if not path.is_file():
        raise ConditioningError("subjects", f"{path} does not exist")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns = reader.fieldnames or []
        missing = [c for c in ("age", "sex", "ventricular_volume_mm3", "brain_volume_mm3") if c not in columns]
        if missing:
            raise ConditioningError("subjects", f"{path} lacks the column(s) {', '.join(missing)} (tab-separated)")
        subjects = []
        for index, row in enumerate(reader):
            where = f"{path} row {index + 2}"
            try:
                covariates = Covariates(
                    sex=row["sex"].strip().upper(),  # type: ignore[arg-type]
                    age=float(row["age"]),
                    ventricular_volume_mm3=float(row["ventricular_volume_mm3"]),
                    brain_volume_mm3=float(row["brain_volume_mm3"]),
                )
                seed = int(row["seed"]) if row.get("seed") else subject_seed(cohort_seed, index)
            except (TypeError, ValueError) as err:
                raise ConditioningError("subjects", f"{where}: {err}") from err
            if covariates.sex not in ("F", "M"):
                raise ConditioningError("sex", f"{where}: must be F or M, got {row['sex']!r}")
            pid = row.get("participant_id") or participant_id(index)
            subjects.append(SubjectSpec(pid, covariates, seed))
    if not subjects:
        raise ConditioningError("subjects", f"{path} lists no subjects")
    if len({s.participant_id for s in subjects}) != len(subjects):
        raise ConditioningError("subjects", f"{path} repeats a participant_id")
    return subjects


def subject_files(
    config: ModelConfig, spec: SubjectSpec, sample: SubjectSample, settings: SamplerSettings, device: str
) -> tuple[SubjectRecord, dict[str, bytes]]:
    """A generated subject's BIDS files (relative path -> bytes): the T1w NIfTI, then its sidecar."""
    record = SubjectRecord(spec.participant_id, spec.covariates, sample.conditioning, spec.seed)
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
    cohort_name: str = "BrainSynth synthetic cohort",
    callback: ProgressCallback | None = None,
) -> Path:
    """Generate ``subjects`` and write them as a BIDS dataset in ``out_dir`` (new or empty).

    Files are written per batch as subjects finish; ``participants.tsv`` is written last.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty: choose a new output directory")
    config = pipeline.config
    for spec in subjects:  # fail before any compute
        normalise(spec.covariates, config.conditioning, extrapolate=extrapolate)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset_description.json").write_text(dumps(dataset_description(config, cohort_name)))
    (out_dir / "README").write_text(dataset_readme(config, cohort_name))
    (out_dir / "participants.json").write_text(dumps(participants_json(config)))
    settings = SamplerSettings(sampler, num_inference_steps, 0.0, batch_size, dtype)
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
            batch_size=batch_size,
            extrapolate=extrapolate,
            callback=forward,
        )
        done_before += len(chunk) * (num_inference_steps + 1)
        for spec, sample in zip(chunk, samples, strict=True):
            record, files = subject_files(config, spec, sample, settings, str(pipeline.device))
            for relative, content in files.items():  # the sidecar comes last: it marks the subject done
                (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                (out_dir / relative).write_bytes(content)
            records.append(record)
    (out_dir / "participants.tsv").write_text(participants_tsv(records))
    return out_dir
