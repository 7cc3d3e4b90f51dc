"""Cohorts drawn like a reference table (models.cohort.like): the copula keeps its correlations and
marginals, is seeded, stays in the model's range, and refuses a table it cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.cohort.conditioning import UKB_RANGES
from models.cohort.like import MIN_REFERENCE_ROWS, ReferenceTable, like_subjects, ranks, spearman
from models.errors import ConditioningError


def reference_rows(n: int = 300, seed: int = 0) -> list[dict[str, object]]:
    """A study-like table: ventricles grow and brains shrink with age (as in UK Biobank), 55 % female."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(45, 80, n)
    ventricles = 8000 + (age - 45) ** 2 * 40 + rng.normal(0, 8000, n)
    brain = 1.6e6 - (age - 45) * 4000 + rng.normal(0, 40000, n)
    sex = np.where(rng.random(n) < 0.55, "F", "M")
    return [
        {"participant_id": f"sub-{i:04d}", "age": f"{a:.1f}", "sex": s, "ventricular_volume_mm3": f"{v:.0f}",
         "brain_volume_mm3": f"{b:.0f}"}
        for i, (a, s, v, b) in enumerate(zip(age, sex, ventricles, brain, strict=True))
    ]  # fmt: skip


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    columns = list(rows[0])
    path.write_text("\t".join(columns) + "\n" + "".join("\t".join(str(r[c]) for c in columns) + "\n" for r in rows))
    return path


def test_500_subjects_keep_the_references_correlations_and_marginals(tmp_path: Path) -> None:
    reference = ReferenceTable.from_tsv(_write(tmp_path / "participants.tsv", reference_rows()))
    subjects, report = like_subjects(reference, 500, 11, UKB_RANGES)
    age = np.array([s.covariates.age for s in subjects])
    ventricles = np.array([s.covariates.ventricular_volume_mm3 for s in subjects])
    wanted = spearman({"a": reference.columns["age"], "v": reference.columns["ventricular_volume_mm3"]})["a"]["v"]
    got = spearman({"a": age, "v": ventricles})["a"]["v"]
    assert wanted is not None and got is not None and abs(got - wanted) < 0.1, (wanted, got)
    assert report["spearman"]["reference"]["age"]["ventricular_volume_mm3"] == wanted
    assert abs(report["spearman"]["synthetic"]["age"]["brain_volume_mm3"] - (-0.75)) < 0.15
    assert report["female_fraction"]["synthetic"] == report["female_fraction"]["reference"]  # exact counts
    for field in ("age", "ventricular_volume_mm3", "brain_volume_mm3"):
        ref_q, syn_q = report["quantiles"][field]["reference"], report["quantiles"][field]["synthetic"]
        assert abs(syn_q[2] - ref_q[2]) < 0.06 * abs(ref_q[2])  # medians within 6 %
    assert report["reference_rows"] == 300 and len(report["reference_sha256"]) == 64
    json.dumps(report, allow_nan=False)  # a JSON document the API can answer with


def test_the_draw_is_seeded_and_subject_seeds_follow_the_cohort_seed() -> None:
    reference = ReferenceTable.from_rows(reference_rows(50))
    first, _ = like_subjects(reference, 20, 3, UKB_RANGES)
    again, _ = like_subjects(reference, 20, 3, UKB_RANGES)
    other, _ = like_subjects(reference, 20, 4, UKB_RANGES)
    assert first == again and first != other
    assert [s.participant_id for s in first][:2] == ["sub-000001", "sub-000002"]


def test_draws_stay_in_the_models_range_and_missing_columns_are_uniform() -> None:
    rows = [{"age": str(a), "sex": "female"} for a in np.linspace(20, 95, 40)]  # beyond 44-82 at both ends
    subjects, report = like_subjects(ReferenceTable.from_rows(rows), 200, 1, UKB_RANGES)
    ages = [s.covariates.age for s in subjects]
    assert min(ages) == 44.0 and max(ages) == 82.0  # clipped to the training range
    assert {s.covariates.sex for s in subjects} == {"F"}  # a constant column stays constant
    ventricles = np.array([s.covariates.ventricular_volume_mm3 for s in subjects])
    assert UKB_RANGES.ventricular_volume_mm3.min <= ventricles.min() and ventricles.max() <= 171375.0
    assert np.ptp(ventricles) > 0.8 * (171375.0 - 6995.68)  # spread over the range: no reference column
    assert report["columns"] == ["sex", "age"] and report["spearman"]["reference"]["sex"]["age"] is None
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize(
    "rows",
    [
        [{"participant_id": f"sub-{i}", "group": "control"} for i in range(30)],
        [{"age": "n/a", "sex": "x"} for _ in range(30)],
        [{"age": "60"} for _ in range(MIN_REFERENCE_ROWS - 1)],
    ],
)
def test_a_reference_with_no_usable_column_is_refused_naming_it(rows: list[dict[str, str]], tmp_path: Path) -> None:
    path = _write(tmp_path / "study.tsv", rows)
    with pytest.raises(ConditioningError, match=r"study\.tsv has no usable column") as raised:
        ReferenceTable.from_tsv(path)
    assert raised.value.field == "like" and "age, ventricular_volume_mm3 or brain_volume_mm3" in str(raised.value)


def test_ranks_share_ties() -> None:
    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
