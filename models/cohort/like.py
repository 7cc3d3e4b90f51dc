"""Cohorts drawn like a real one: covariates from a Gaussian copula fitted to a reference table.

The reference is a participants table of a real study (age, sex and, when present, the two volumes). Its
joint distribution is modelled as a Gaussian copula (Nelsen 2006, "An Introduction to Copulas", section 2.3)
fitted on ranks: ``R`` comes from the columns' Spearman rho (ties share their mean rank; sex is a 0/1 column,
female first) by ``R = 2 sin(pi rho / 6)`` (:func:`copula_correlation`), so a synthetic subject
``z ~ N(0, R)`` (seeded) has the reference's rank correlations; it is mapped back
through ``Phi`` and each column's empirical quantile function (linear interpolation between the reference's
sorted values; sex: the round(n x female fraction) subjects of lowest score are female). So the synthetic cohort
keeps the reference's marginals and its rank correlations (Spearman's rho), up to sampling error. Values
are clipped to the model's training range (or, with ``extrapolate``, to the extrapolation bounds) and
rounded as :func:`models.cohort.design.design_subjects` rounds them. Covariates the reference lacks are
drawn uniformly over the model's range, independently. Subject seeds follow
:func:`models.cohort.design.subject_seed`, so every subject regenerates alone from participants.tsv.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from models.cohort.conditioning import EXTRAPOLATION_BOUNDS, FIELDS, ConditioningRanges, Covariates
from models.cohort.design import MAX_SUBJECTS, SubjectSpec, normalise_sex, participant_id, subject_seed
from models.errors import ConditioningError

#: A column is used when at least this many reference rows hold a valid value in it (and in every other
#: column used): fewer cannot estimate a correlation.
MIN_REFERENCE_ROWS = 10
#: Quantiles reported for each covariate, reference against synthetic.
REPORT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_NORMAL = NormalDist()


@dataclass(frozen=True)
class ReferenceTable:
    """The usable columns of a reference table (complete rows only): continuous covariates in their units,
    ``sex`` as 0 (F) / 1 (M)."""

    columns: dict[str, np.ndarray]
    source: str
    digest: str

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values())))

    def rows(self) -> list[dict[str, float | str]]:
        """The used values as rows (sex as F/M), as the API's ``like.rows`` takes them."""
        return [
            {f: ("F" if c[i] == 0 else "M") if f == "sex" else float(c[i]) for f, c in self.columns.items()}
            for i in range(self.n_rows)
        ]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], source: str = "like") -> ReferenceTable:
        """The reference from rows of covariate values (strings or numbers; sex F/M/female/male).

        Raises:
            ConditioningError: no column has :data:`MIN_REFERENCE_ROWS` valid values (field ``like``, naming
                ``source`` and what it found).
        """
        parsed = {field: [_value(field, row.get(field)) for row in rows] for field in FIELDS}
        usable = [f for f in FIELDS if sum(v is not None for v in parsed[f]) >= MIN_REFERENCE_ROWS]
        complete = [i for i in range(len(rows)) if all(parsed[f][i] is not None for f in usable)]
        if not usable or len(complete) < MIN_REFERENCE_ROWS:
            present = sorted({key for row in rows for key in row}) or ["none"]
            raise ConditioningError(
                "like",
                f"{source} has no usable column: it needs at least {MIN_REFERENCE_ROWS} rows with a number in "
                f"age, ventricular_volume_mm3 or brain_volume_mm3 (or F/M in sex); it has {len(rows)} rows and "
                f"the columns {', '.join(present)}",
            )
        columns = {f: np.array([parsed[f][i] for i in complete], dtype=np.float64) for f in usable}
        canonical = json.dumps({f: c.tolist() for f, c in columns.items()}, sort_keys=True).encode()
        return cls(columns, source, hashlib.sha256(canonical).hexdigest())

    @classmethod
    def from_tsv(cls, path: Path) -> ReferenceTable:
        """The reference from a tab-separated table with a header (a participants.tsv)."""
        path = Path(path)
        if not path.is_file():
            raise ConditioningError("like", f"{path} does not exist")
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        return cls.from_rows(rows, str(path))


def _value(field: str, raw: Any) -> float | None:
    """One cell as a number (sex: 0 for F, 1 for M), or ``None`` when empty or not valid (n/a, NaN, text)."""
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "n/a", "na", "nan")):
        return None
    if field == "sex":
        try:
            return 0.0 if normalise_sex(str(raw)) == "F" else 1.0
        except ValueError:
            return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their mean rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    result = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        result[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(columns: Mapping[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """Spearman's rho between every pair of columns (``None`` where a column is constant)."""
    names = list(columns)
    ranked = np.array([ranks(columns[n]) for n in names])
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.atleast_2d(np.corrcoef(ranked)) if len(names) > 1 else np.ones((1, 1))
    return {
        a: {b: None if math.isnan(matrix[i, j]) else round(float(matrix[i, j]), 4) for j, b in enumerate(names)}
        for i, a in enumerate(names)
    }


def copula_correlation(columns: Sequence[np.ndarray]) -> np.ndarray:
    """The Gaussian copula's correlation matrix from the columns' Spearman rho: ``R = 2 sin(pi rho / 6)``, the
    inversion under which a Gaussian copula has exactly that rho (Kruskal 1958), made positive definite
    (eigenvalues clipped, unit diagonal restored) when the pairwise estimates disagree."""
    ranked = np.array([ranks(c) for c in columns])
    rho = np.atleast_2d(np.corrcoef(ranked)) if len(columns) > 1 else np.ones((1, 1))
    correlation = 2 * np.sin(np.pi * rho / 6)
    values, vectors = np.linalg.eigh(correlation)
    correlation = vectors @ np.diag(np.clip(values, 1e-6, None)) @ vectors.T
    scale = np.sqrt(np.diag(correlation))
    return correlation / np.outer(scale, scale)


def _bounds(field: str, ranges: ConditioningRanges, extrapolate: bool) -> tuple[float, float]:
    spec = ranges.covariate(field)
    if not extrapolate:
        return spec.min, spec.max
    return spec.denormalise(EXTRAPOLATION_BOUNDS[0]), spec.denormalise(EXTRAPOLATION_BOUNDS[1])


def draw_like(
    reference: ReferenceTable, n: int, seed: int, ranges: ConditioningRanges, *, extrapolate: bool = False
) -> dict[str, np.ndarray]:
    """``n`` subjects' covariates (every field; sex as 0/1) from the copula fitted to ``reference``."""
    if not 1 <= n <= MAX_SUBJECTS:
        raise ConditioningError("n_subjects", f"must be between 1 and {MAX_SUBJECTS}, got {n}")
    rng = np.random.default_rng(seed)
    varying = [f for f, c in reference.columns.items() if np.ptp(c) > 0]
    drawn: dict[str, np.ndarray] = {f: np.full(n, c[0]) for f, c in reference.columns.items() if f not in varying}
    if varying:
        factor = np.linalg.cholesky(copula_correlation([reference.columns[f] for f in varying]))
        z = rng.standard_normal((n, len(varying))) @ factor.T
        u = np.array([[_NORMAL.cdf(v) for v in row] for row in z])
        for index, field in enumerate(varying):
            column = reference.columns[field]
            if field == "sex":  # the round(n x female fraction) lowest scores are female, as in the design
                female = np.argsort(u[:, index], kind="stable")[: round(n * float(np.mean(column == 0)))]
                drawn[field] = np.ones(n)
                drawn[field][female] = 0.0
            else:
                drawn[field] = np.quantile(column, u[:, index], method="linear")
    for field in FIELDS[1:]:
        lo, hi = _bounds(field, ranges, extrapolate)
        drawn[field] = np.clip(drawn[field], lo, hi) if field in drawn else rng.uniform(lo, hi, size=n)
    if "sex" not in drawn:
        drawn["sex"] = rng.permutation(np.arange(n) >= round(n * 0.5)).astype(np.float64)
    return drawn


def like_subjects(
    reference: ReferenceTable, n: int, seed: int, ranges: ConditioningRanges, *, extrapolate: bool = False
) -> tuple[list[SubjectSpec], dict[str, Any]]:
    """The cohort's subjects drawn like ``reference``, and the report comparing the two (:func:`like_report`)."""
    drawn = draw_like(reference, n, seed, ranges, extrapolate=extrapolate)
    subjects = []
    for i in range(n):
        covariates = Covariates(
            sex="F" if drawn["sex"][i] == 0 else "M",
            age=round(float(drawn["age"][i]), 2),
            ventricular_volume_mm3=round(float(drawn["ventricular_volume_mm3"][i]), 1),
            brain_volume_mm3=round(float(drawn["brain_volume_mm3"][i]), 1),
        )
        subjects.append(SubjectSpec(participant_id(i), covariates, subject_seed(seed, i)))
    return subjects, like_report(reference, subjects)


def like_report(reference: ReferenceTable, subjects: Sequence[SubjectSpec]) -> dict[str, Any]:
    """Reference against synthetic: Spearman correlation matrices of the reference's columns, their
    quantiles, the female fraction, and the reference's size and sha256 (of its used values, never the rows)."""
    synthetic = {
        field: np.array(
            [
                (0.0 if s.covariates.sex == "F" else 1.0) if field == "sex" else getattr(s.covariates, field)
                for s in subjects
            ]
        )
        for field in reference.columns
    }
    quantiles = {
        field: {
            "reference": [round(float(q), 2) for q in np.quantile(reference.columns[field], REPORT_QUANTILES)],
            "synthetic": [round(float(q), 2) for q in np.quantile(synthetic[field], REPORT_QUANTILES)],
        }
        for field in reference.columns
        if field != "sex"
    }
    report: dict[str, Any] = {
        "reference_rows": reference.n_rows,
        "reference_sha256": reference.digest,
        "columns": list(reference.columns),
        "spearman": {"reference": spearman(reference.columns), "synthetic": spearman(synthetic)},
        "quantiles": {"levels": list(REPORT_QUANTILES), **quantiles},
    }
    if "sex" in reference.columns:
        report["female_fraction"] = {
            "reference": round(float(np.mean(reference.columns["sex"] == 0)), 4),
            "synthetic": round(float(np.mean(synthetic["sex"] == 0)), 4),
        }
    return report
