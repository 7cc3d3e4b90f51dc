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
