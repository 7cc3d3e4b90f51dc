"""Who a cohort contains, decided without torch (the service validates requests with it before queueing).

Covariates not fixed by the caller are drawn from ``numpy.random.default_rng(cohort_seed)``: age and
volumes uniformly over the requested range (default: the model's training range); sex by exact counts
(``female_fraction`` rounded) in shuffled order. Subject seeds come from :func:`subject_seed`, so
subject i of a cohort is the same in any batch size and can be regenerated alone from participants.tsv.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from models.cohort.conditioning import FIELDS, ConditioningRanges, Covariates, normalise
from models.cohort.nifti import OutputDType
from models.errors import ConditioningError, SamplingError

# The request vocabulary, owned here for the CLI, the API schemas, the task payloads and the pipeline (torch-free).
#: NIfTI data types a cohort can be written in (:func:`models.cohort.nifti.to_nifti`).
DTYPES: tuple[str, ...] = get_args(OutputDType)
#: How a cohort's images are measured back (``qc``): not at all, the model's volume probe, FreeSurfer's SAMSEG.
QcMeasure = Literal["none", "probe", "samseg"]
QC_MEASURES: tuple[str, ...] = get_args(QcMeasure)
#: What a diffusion UNet can be trained to predict (model.json ``scheduler.prediction_type``).
PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)


@dataclass(frozen=True)
class SamplerInfo:
    """One sampler of :data:`SAMPLER_TABLE`: what a request may ask of it and which models it can run.

    Attributes:
        name: the request name (``sampler.name`` in the API, ``--sampler`` on the command line).
        default_steps: steps used when the caller gives none.
        min_steps: fewest steps it can run.
        all_steps: it runs every training timestep (its update assumes consecutive timesteps).
        prediction_types: the UNet parameterisations it supports (:data:`PREDICTION_TYPES`).
    """

    name: str
    default_steps: int
    min_steps: int = 1
    all_steps: bool = False
    prediction_types: tuple[str, ...] = PREDICTION_TYPES


#: Every sampler, in one place (:func:`models.inference.sampling.build_scheduler` builds them): DDIM at the
#: paper's 50 steps, full-length DDPM, PLMS (MONAI's PNDM, which has no ``sample`` parameterisation) at its usual
#: 50, and DPM-Solver++(2M) at 15 (see bench/ for speed against fidelity).
SAMPLER_TABLE: dict[str, SamplerInfo] = {
    info.name: info
    for info in (
        SamplerInfo("ddim", 50),
        SamplerInfo("ddpm", 1000, all_steps=True),
        SamplerInfo("pndm", 50, prediction_types=("epsilon", "v_prediction")),
        SamplerInfo("dpmpp2m", 15, min_steps=2),
    )
}
#: Samplers by request name.
SamplerName = Literal[tuple(SAMPLER_TABLE)]  # type: ignore[valid-type]
SAMPLERS: tuple[str, ...] = tuple(SAMPLER_TABLE)
DEFAULT_STEPS: dict[str, int] = {name: info.default_steps for name, info in SAMPLER_TABLE.items()}


def _by_default_steps() -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for name, info in SAMPLER_TABLE.items():
        groups.setdefault(info.default_steps, []).append(name)
    return groups


def sampler_names_text() -> str:
    """The samplers in words, for help texts: ``ddim, pndm, ddpm or dpmpp2m``."""
    names = [name for group in _by_default_steps().values() for name in group]
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def default_steps_text() -> str:
    """Each sampler's default steps in words: ``50 for ddim and pndm, 1000 for ddpm, 15 for dpmpp2m``."""
    return ", ".join(f"{steps} for {' and '.join(names)}" for steps, names in _by_default_steps().items())


SEED_MASK = (1 << 63) - 1


#: A BIDS participant label: ``sub-`` and letters and digits only (no separators, so never a path).
PARTICIPANT_LABEL = r"sub-[A-Za-z0-9]+"


def is_participant_label(text: str) -> bool:
    """Whether ``text`` is a BIDS participant label (:data:`PARTICIPANT_LABEL`)."""
    return re.fullmatch(PARTICIPANT_LABEL, text) is not None


def participant_id(index: int) -> str:
    """BIDS participant label of subject ``index`` (0-based): ``sub-000001`` for index 0."""
    return f"sub-{index + 1:06d}"


def subject_seed(cohort_seed: int, index: int) -> int:
    """Seed of subject ``index`` (0-based) of a cohort: the first 8 bytes of
    ``sha256(f"brainsynth-subject:{cohort_seed}:{index}")``, big-endian, masked to 63 bits.

    Stable across platforms and Python versions; distinct indices give unrelated seeds.
    """
    digest = hashlib.sha256(f"brainsynth-subject:{int(cohort_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & SEED_MASK


#: The largest classifier-free guidance scale a request may ask for (sweeps go to 5; past 10 images saturate).
MAX_GUIDANCE = 10.0
#: Most attempts a subject measured outside its QC tolerance may get (``max_attempts``: 1 = no regeneration).
MAX_ATTEMPTS_LIMIT = 5


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of a subject's ``attempt`` (1-based): its own seed first; attempt k > 1 (a regeneration after a
    measurement outside tolerance) the first 8 bytes of ``sha256(f"brainsynth-attempt:{seed}:{k}")``,
    big-endian, masked to 63 bits. participants.tsv records the seed that made the image and its attempt."""
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    if attempt == 1:
        return int(seed)
    digest = hashlib.sha256(f"brainsynth-attempt:{int(seed)}:{int(attempt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & SEED_MASK


#: The way to fewer steps than DDPM's, in the API's words (the CLI says ``--sampler``).
FEWER_STEPS_HINT = "choose the ddim or pndm sampler for fewer steps"

#: Subjects sampled together (one UNet batch) by default, locally and per service task: a subject's bytes
#: depend (within 1e-5) on its batch, so the same default gives the same bytes from `sample` and the API.
DEFAULT_BATCH_SIZE = 4


def check_sampler(sampler: str, steps: int, num_train_timesteps: int, prediction_type: str = "epsilon") -> None:
    """Refuse a sampler, step count or model parameterisation the sampler cannot run (:data:`SAMPLER_TABLE`).

    Raises:
        SamplingError: ``field`` is ``sampler.name`` (an unknown sampler, or one that cannot sample a model
            trained for ``prediction_type``) or ``sampler.steps``.
    """
    info = SAMPLER_TABLE.get(sampler)
    if info is None:
        raise SamplingError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}", field="sampler.name")
    if prediction_type not in info.prediction_types:
        able = ", ".join(name for name, other in SAMPLER_TABLE.items() if prediction_type in other.prediction_types)
        raise SamplingError(
            f"{sampler} cannot sample this model: it predicts {prediction_type!r} and {sampler} supports "
            f"{' and '.join(info.prediction_types)}; choose {able}",
            field="sampler.name",
        )
    total = num_train_timesteps
    if not 1 <= steps <= total:
        raise SamplingError(f"steps must be between 1 and {total} for {sampler}, got {steps}", field="sampler.steps")
    if steps < info.min_steps:
        raise SamplingError(
            f"steps must be at least {info.min_steps} for {sampler}, got {steps}", field="sampler.steps"
        )
    if info.all_steps and steps != total:
        raise SamplingError(
            f"steps must be {total} for {sampler} (its update assumes consecutive timesteps); " + FEWER_STEPS_HINT,
            field="sampler.steps",
        )


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


def unprintable(text: str) -> str | None:
    """The first control or invisible character of ``text`` as ``U+XXXX`` (they would land raw in the
    dataset's README and JSON), else ``None``."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def normalise_sex(text: str) -> str:
    """``F``/``M`` from F, M, female or male in any case (BIDS participants.tsv stores F/M).

    Raises:
        ValueError: anything else.
    """
    value = {"f": "F", "female": "F", "m": "M", "male": "M"}.get(str(text).strip().lower())
    if value is None:
        raise ValueError(f"sex must be F or M (or female/male), got {text!r}")
    return value


def tsv_has_column(path: Path, column: str) -> bool:
    """Whether the tab-separated file's header names ``column`` (False if the file cannot be read)."""
    try:
        with open(path, newline="") as handle:
            return column in next(csv.reader(handle, delimiter="\t"), [])
    except OSError:
        return False


def tsv_sampling(path: Path) -> tuple[str, int] | None:
    """The (sampler, steps) a participants.tsv records for all its subjects, else ``None``.

    Raises:
        ConditioningError: the rows disagree (a file mixing settings cannot be regenerated in one run).
    """
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    found = {(r.get("sampler") or "n/a", r.get("steps") or "n/a") for r in rows}
    found.discard(("n/a", "n/a"))
    if not found:
        return None
    if len(found) > 1:
        raise ConditioningError("subjects", f"{path} mixes samplers/steps {sorted(found)}: split it by setting")
    sampler, steps = found.pop()
    try:
        return sampler, int(steps)
    except ValueError as err:
        raise ConditioningError("subjects", f"{path}: steps must be an integer, got {steps!r}") from err


def tsv_guidance(path: Path) -> float | None:
    """The classifier-free guidance scale a participants.tsv records for all its subjects, else ``None``.

    Raises:
        ConditioningError: the rows disagree, or a value is not a number.
    """
    with open(path, newline="") as handle:
        found = {r.get("guidance") or "n/a" for r in csv.DictReader(handle, delimiter="\t")}
    found.discard("n/a")
    if not found:
        return None
    if len(found) > 1:
        raise ConditioningError("subjects", f"{path} mixes guidance scales {sorted(found)}: split it by scale")
    value = found.pop()
    try:
        return float(value)
    except ValueError as err:
        raise ConditioningError("subjects", f"{path}: guidance must be a number, got {value!r}") from err


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
                    sex=normalise_sex(row["sex"]),  # type: ignore[arg-type]
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
            if not is_participant_label(pid):
                raise ConditioningError(
                    "subjects",
                    f"{where}: participant_id {pid!r} is not a BIDS label (sub- then letters and digits only, "
                    "e.g. sub-000001): fix or drop the participant_id column",
                )
            subjects.append(SubjectSpec(pid, covariates, seed))
    if not subjects:
        raise ConditioningError("subjects", f"{path} lists no subjects")
    if len({s.participant_id for s in subjects}) != len(subjects):
        raise ConditioningError("subjects", f"{path} repeats a participant_id")
    if (twins := repeated_subject(subjects)) is not None:
        earlier, later = twins
        raise ConditioningError(
            "subjects",
            f"{path} row {later + 2} repeats row {earlier + 2} (same seed and covariates: the same brain twice): "
            "change or drop its seed",
        )
    return subjects


def repeated_subject(subjects: Sequence[SubjectSpec]) -> tuple[int, int] | None:
    """(earlier index, later index) of two subjects with the same seed and covariates (the same brain twice),
    else ``None``: one rule for the API's subjects list and the command line's ``--subjects`` file."""
    seen: dict[tuple[int, Covariates], int] = {}
    for index, subject in enumerate(subjects):
        key = (subject.seed, subject.covariates)
        if key in seen:
            return seen[key], index
        seen[key] = index
    return None
