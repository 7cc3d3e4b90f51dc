"""The cohort folder passes the official BIDS validator (installed by `make test` when npm is available)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from models.cohort.design import CohortDesign, design_subjects
from models.dataset.writer import write_cohort
from models.inference.pipeline import BrainLDMPipeline

VALIDATOR = os.environ.get("BRAINSYNTH_BIDS_VALIDATOR", "")


@pytest.mark.skipif(not Path(VALIDATOR).is_file(), reason="bids-validator not installed (make test installs it)")
def test_cohort_is_valid_bids(tiny_model_dir: Path, tmp_path: Path) -> None:
    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    subjects = design_subjects(CohortDesign(2, seed=1), pipeline.config.conditioning)
    authors = ["A. Researcher", "B. Researcher"]
    out = write_cohort(pipeline, subjects, tmp_path / "cohort", num_inference_steps=2, authors=authors)
    result = subprocess.run([VALIDATOR, str(out)], capture_output=True, text=True, timeout=300)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "[ERR]" not in report
    assert "[WARN]" not in report, report  # no warning at all with the authors named
    assert "2 - Subjects" in report
    assert (out / "SHA256SUMS").is_file() and (out / ".bidsignore").read_text() == "SHA256SUMS\n"


@pytest.mark.skipif(not Path(VALIDATOR).is_file(), reason="bids-validator not installed (make test installs it)")
def test_without_authors_the_default_author_leaves_only_the_one_author_notice(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    subjects = design_subjects(CohortDesign(1, seed=1), pipeline.config.conditioning)
    out = write_cohort(pipeline, subjects, tmp_path / "cohort", num_inference_steps=2)
    report = subprocess.run([VALIDATOR, str(out)], capture_output=True, text=True, timeout=300).stdout
    warnings = [line for line in report.splitlines() if "[WARN]" in line]
    assert len(warnings) == 1 and "TOO_FEW_AUTHORS" in warnings[0], report


@pytest.mark.skipif(not Path(VALIDATOR).is_file(), reason="bids-validator not installed (make test installs it)")
def test_a_cohort_drawn_like_a_reference_table_is_valid_bids(tiny_model_dir: Path, tmp_path: Path) -> None:
    """like_report.json sits at the root, named in .bidsignore: the validator finds no error or warning."""
    from models.cohort.like import ReferenceTable, like_subjects
    from tests.models.cohort.test_like import reference_rows

    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    reference = ReferenceTable.from_rows(reference_rows(30))
    subjects, report = like_subjects(reference, 2, 5, pipeline.config.conditioning)
    out = write_cohort(pipeline, subjects, tmp_path / "cohort", num_inference_steps=2, authors=["A. B", "C. D"],
                       like_report=report)  # fmt: skip
    result = subprocess.run([VALIDATOR, str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "[ERR]" not in result.stdout and "[WARN]" not in result.stdout, result.stdout
    assert (out / "like_report.json").is_file()
