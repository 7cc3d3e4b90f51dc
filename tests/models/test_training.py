"""Both training stages on a 10-subject phantom set: losses logged, resumable, a model that samples."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from models.cli import main
from models.config import read_model_config
from models.errors import WeightsError
from models.nifti import mni_centred_affine
from models.phantoms import write_phantom_cohort
from models.pipeline import BrainLDMPipeline
from models.train.autoencoder import kl_divergence
from tests.conftest import tiny_config

GRID = {
    "image_shape": (16, 24, 16),
    "voxel_size_mm": (10.0, 10.0, 10.0),
    "affine": mni_centred_affine((16, 24, 16), 10.0),
}


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_cohort(10, 3, tmp_path_factory.mktemp("data") / "phantoms", tiny_config())


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_kl_divergence_is_zero_for_the_prior_and_positive_otherwise() -> None:
    assert kl_divergence(torch.zeros(2, 3, 4), torch.ones(2, 3, 4)).item() == 0.0
    assert kl_divergence(torch.ones(2, 3, 4), torch.ones(2, 3, 4)).item() == pytest.approx(6.0)


def test_ema_decay_warms_up() -> None:
    from models.train.diffusion import ema_decay

    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(90, 0.999) == pytest.approx(0.91)
    assert ema_decay(100_000, 0.999) == 0.999
    # What is left of the initial weights after 1500 steps is negligible (it was 22 % without warm-up).
    remaining = 1.0
    for step in range(1500):
        remaining *= ema_decay(step, 0.999)
    assert remaining < 1e-3


def test_two_stage_training_resumes_and_samples(
    phantom_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.cli as cli

    model_dir = tmp_path / "model"
    monkeypatch.setitem(cli.PRESETS, "demo", tiny_config)  # the tiny grid stands in for the demo preset
    base = ["--data", str(phantom_set), "--model-dir", str(model_dir), "--batch-size", "2", "--device", "cpu"]
    assert main(["train", "autoencoder", *base, "--steps", "3"]) == 0
    first = read_model_config(model_dir)
    assert first.weights is not None and first.weights.unet is None
    assert main(["train", "autoencoder", *base, "--steps", "6"]) == 0  # resumes at step 3
    log = _rows(model_dir / "logs" / "autoencoder.csv")
    assert [int(r["step"]) for r in log] == [3, 6]
    assert all(float(r["l1"]) > 0 for r in log)
    assert torch.load(model_dir / "checkpoints" / "autoencoder.ckpt", weights_only=False)["step"] == 6

    with pytest.raises(WeightsError, match="no diffusion model yet"):
        BrainLDMPipeline.from_dir(model_dir)
    assert main(["train", "diffusion", *base, "--steps", "4"]) == 0
    trained = read_model_config(model_dir)
    assert trained.is_complete and trained.weights_verified
    assert trained.scale_factor != 1.0  # measured from the latents' std
    assert [int(r["step"]) for r in _rows(model_dir / "logs" / "diffusion.csv")] == [4]

    out = tmp_path / "cohort"
    assert (
        main(["sample", "--model", str(model_dir), "--n", "2", "--seed", "1", "--out", str(out), "--steps", "3"]) == 0
    )
    assert len(list(out.glob("sub-*/anat/*_T1w.nii.gz"))) == 2

    # A fine-tune in a new directory takes the autoencoder as is and starts the UNet from the source's.
    tuned = tmp_path / "tuned"
    fine = ["--data", str(phantom_set), "--model-dir", str(tuned), "--batch-size", "2", "--device", "cpu"]
    assert main(["train", "diffusion", *fine, "--init-from", str(model_dir), "--steps", "1", "--lr", "1e-12"]) == 0
    tuned_config = read_model_config(tuned)
    assert tuned_config.weights.autoencoder.sha256 == trained.weights.autoencoder.sha256  # type: ignore[union-attr]
    source_unet = torch.load(model_dir / "model.pt", weights_only=True)
    tuned_unet = torch.load(tuned / "model.pt", weights_only=True)
    assert max((source_unet[k] - tuned_unet[k]).abs().max().item() for k in source_unet) < 1e-6


def test_training_data_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "autoencoder", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--steps", "1"])
    assert code == 1
    assert "participants.tsv not found" in capsys.readouterr().err
    assert (
        main(["train", "diffusion", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--steps", "0"]) == 2
    )
