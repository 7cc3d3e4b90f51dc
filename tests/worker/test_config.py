"""Worker settings from ``BRAINSYNTH_*`` variables reach the loaded pipeline; bad combinations fail at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from models.inference.execution import Execution
from worker import config, gpu


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAINSYNTH_S3_ACCESS_KEY", "key")
    monkeypatch.setenv("BRAINSYNTH_S3_SECRET_KEY", "secret")
    config.get_settings.cache_clear()
    gpu.pipeline_for.cache_clear()
    yield
    config.get_settings.cache_clear()
    gpu.pipeline_for.cache_clear()


def test_decode_and_precision_settings_reach_the_pipeline(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRAINSYNTH_DECODE_SLAB", "3")
    monkeypatch.setenv("BRAINSYNTH_DECODE_OFFLOAD", "true")
    monkeypatch.setenv("BRAINSYNTH_PRECISION", "bf16")
    pipeline = gpu.pipeline_for(str(tiny_model_dir))
    assert pipeline.execution == Execution("bf16", decode_slab=3, decode_offload=True)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"BRAINSYNTH_DECODE_OFFLOAD": "true"}, "BRAINSYNTH_DECODE_OFFLOAD\\) needs a decode slab"),
        ({"BRAINSYNTH_DECODE_SLAB": "0"}, "decode_slab"),
        ({"BRAINSYNTH_PRECISION": "fp8"}, "precision"),
    ],
)
def test_bad_settings_name_the_variable(
    variables: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        config.get_settings()


def test_a_subject_job_and_its_spec_convert_both_ways() -> None:
    from jobs.contract import SubjectJob
    from models.cohort.conditioning import Covariates
    from models.cohort.design import SubjectSpec

    spec = SubjectSpec("sub-000003", Covariates("F", 66.0, 25000.0, 1510000.0), 12345)
    job = SubjectJob.from_spec(spec, tenant="lab-a", cohort_id="c1", model="demo", sampler="ddim", steps=50)
    assert job.spec() == spec and job.age == 66.0 and job.tenant == "lab-a"
