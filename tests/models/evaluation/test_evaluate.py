"""The volume probe and `brainsynth evaluate` on an 8 mm tiny model and a few phantoms (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brainsynth.cli import main
from models.cohort.nifti import mni_centred_affine
from models.dataset.qc import agreement, pearson_r
from models.evaluation.evaluate import ms_ssim_pairs
from models.evaluation.volumes import ProbeError, VolumeProbe
from models.training.phantoms import write_phantom_cohort
from tests.conftest import make_model_dir, tiny_config

#: The smallest grid MS-SSIM with 3 scales and a 5-voxel kernel admits (> 16 voxels a side).
CONFIG = tiny_config("tiny8").model_copy(
    update={
        "image_shape": (20, 28, 20),
        "voxel_size_mm": (8.0, 8.0, 8.0),
        "affine": mni_centred_affine((20, 28, 20), 8.0),
    }
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    return {
        "train": write_phantom_cohort(8, 3, root / "train", CONFIG),
        "validation": write_phantom_cohort(6, 4, root / "validation", CONFIG),
        "model": make_model_dir(root / "tiny8", CONFIG),
        "probe": root / "probe",
    }


def test_agreement_measures() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson_r(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson_r(a, -a) == pytest.approx(-1.0)
    assert agreement(a * 1000, a * 1000 + 100) == {"pearson_r": 1.0, "mae_mm3": 100.0, "mape_percent": 5.21}


def test_ms_ssim_of_identical_images_is_one_and_of_different_ones_less() -> None:
    images = torch.rand((4, 1, *CONFIG.image_shape), generator=torch.Generator().manual_seed(0))
    assert ms_ssim_pairs(torch.cat([images[:1]] * 3), 3, 0) == pytest.approx(1.0, abs=1e-4)
    assert ms_ssim_pairs(images, 3, 0) < 0.5


def test_probe_trains_validates_and_round_trips(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "volumes", "--data", str(setup["train"]), "--validation", str(setup["validation"]),
            "--out", str(setup["probe"]), "--model", str(setup["model"]), "--steps", "4"]  # fmt: skip
    assert main(args) == 0
    assert "held-out phantoms: ventricles r" in capsys.readouterr().out
    probe = VolumeProbe.load(setup["probe"])
    assert probe.info.image_shape == CONFIG.image_shape and probe.info.validation["n"] == 6
    assert probe.info.ventricular_range_mm3[0] < probe.info.ventricular_range_mm3[1]
    assert probe.info.decoder_sha256 is None  # trained on phantoms alone
    volumes = probe.measure(torch.rand((3, 1, *CONFIG.image_shape)))
    assert volumes.shape == (3, 2) and (volumes > 0).all()
    with pytest.raises(ProbeError, match="measures"):
        probe.measure(torch.rand((1, 1, 16, 24, 16)))
    with pytest.raises(ProbeError, match="brainsynth train volumes"):
        VolumeProbe.load(setup["train"])


def test_a_decoded_probe_trains_on_reconstructions_too(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--decoded: the probe also learns the model autoencoder's reconstructions and is validated on both; the
    autoencoder's sha256 is recorded. A model without an autoencoder is refused (exit 2)."""
    from models.catalogue.config import read_model_config, write_model_config
    from models.catalogue.networks import build_autoencoder
    from models.catalogue.weights import read_state_dict
    from models.evaluation.volumes import reconstruct
    from models.training.data import load_training_set

    out = tmp_path / "decoded-probe"
    args = ["train", "volumes", "--data", str(setup["train"]), "--validation", str(setup["validation"]),
            "--model", str(setup["model"]), "--steps", "3", "--decoded"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out phantoms: ventricles r" in printed and "their reconstructions: ventricles r" in printed
    info = VolumeProbe.load(out).info
    config = read_model_config(setup["model"])
    assert config.weights is not None and info.decoder_sha256 == config.weights.autoencoder.sha256
    assert {"decoded_ventricles_pearson_r", "decoded_brain_mae_mm3", "brain_pearson_r"} <= set(info.validation)
    # reconstructions are the autoencoder's posterior mean decoded, in [0, 1], one per image
    autoencoder = build_autoencoder(config)
    autoencoder.load_state_dict(read_state_dict(setup["model"] / config.weights.autoencoder.file))
    images = load_training_set(setup["validation"], config).images
    decoded = reconstruct(autoencoder, images)
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
    assert not torch.equal(decoded, images)
    with torch.inference_mode():
        expected = autoencoder.decode(autoencoder.encode(images[:1])[0]).clamp(0, 1)
    assert torch.allclose(decoded[:1], expected, atol=1e-5)
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    write_model_config(untrained, CONFIG)
    assert main([*args, "--out", str(tmp_path / "never"), "--model", str(untrained)]) == 2
    assert "no trained autoencoder" in capsys.readouterr().err


def test_evaluate_writes_a_report_and_sweeps(setup: dict[str, Path], tmp_path: Path) -> None:
    if not (setup["probe"] / "volume_probe.json").exists():
        pytest.skip("needs the probe trained by the previous test")
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(setup["model"]), "--n", "4", "--out", str(out), "--probe", str(setup["probe"]),
            "--data", str(setup["train"]), "--steps", "3", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    for measure in ("ventricles", "brain"):
        assert -1.0 <= report["conditioning_fidelity"][measure]["pearson_r"] <= 1.0
        assert report["conditioning_fidelity"][measure]["mae_mm3"] >= 0
    diversity = report["diversity"]
    assert 0 < diversity["ms_ssim_generated"] <= 1 and 0 < diversity["ms_ssim_training"] <= 1
    assert diversity["gap"] == pytest.approx(abs(diversity["ms_ssim_generated"] - diversity["ms_ssim_training"]))
    assert len(report["sweeps"]["ventricles"]) == 5 and len(report["sweeps"]["age"]) == 5
    for name in ("sweep-ventricles.png", "sweep-age.png"):
        with Image.open(out / name) as image:
            assert image.size[0] == 5 * CONFIG.image_shape[0] * 4  # five columns, 4x magnified
    assert "| ventricles: Pearson r" in (out / "report.md").read_text()
    # the range ends: the lowest and highest requested ventricles, 8 seeds each (the default), mean and error
    low, high = report["range_ends"]
    assert (low["end"], high["end"]) == ("low", "high") and low["seeds"] == high["seeds"] == 8
    assert low["requested_ventricles_mm3"] == round(report["requested"]["ventricular_range_mm3"][0])
    assert high["requested_ventricles_mm3"] == round(report["requested"]["ventricular_range_mm3"][1])
    for end in (low, high):
        assert end["measured_min_mm3"] <= end["measured_mean_mm3"] <= end["measured_max_mm3"]
        assert end["relative_error"] == pytest.approx(
            end["measured_mean_mm3"] / end["requested_ventricles_mm3"] - 1, abs=1e-3
        )
    assert "| ventricles at the low end" in (out / "report.md").read_text()
    assert main([*args[:6], str(tmp_path / "bad"), *args[7:], "--end-seeds", "0"]) == 2


def test_evaluate_sweeps_guidance_scales(setup: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    if not (setup["probe"] / "volume_probe.json").exists():
        pytest.skip("needs the probe trained by an earlier test")
    from models.catalogue.config import GuidanceConfig

    common = ["--n", "3", "--probe", str(setup["probe"]), "--steps", "2", "--device", "cpu"]
    refused = ["evaluate", "--model", str(setup["model"]), "--out", str(tmp_path / "x"), "--guidance", "1", "2"]
    assert main([*refused, *common]) == 2 and "--guidance" in capsys.readouterr().err
    guided = make_model_dir(tmp_path / "guided8", CONFIG.model_copy(update={"guidance": GuidanceConfig(
        condition_dropout=0.1)}))  # fmt: skip
    out = tmp_path / "sweep"
    assert main(["evaluate", "--model", str(guided), "--out", str(out), "--guidance", "1", "3", *common,
                 "--end-seeds", "2"]) == 0  # fmt: skip
    sweep = json.loads((out / "sweep.json").read_text())
    assert [row["guidance"] for row in sweep["rows"]] == [1.0, 3.0]
    one = json.loads((out / "guidance-1" / "report.json").read_text())
    three = json.loads((out / "guidance-3" / "report.json").read_text())
    assert one["settings"]["guidance"] == 1.0 and three["settings"]["guidance"] == 3.0
    assert sweep["rows"][1]["ventricles_pearson_r"] == three["conditioning_fidelity"]["ventricles"]["pearson_r"]
    assert three["range_ends"][0]["seeds"] == 2
    assert sweep["rows"][1]["low_end_error"] == three["range_ends"][0]["relative_error"]
    assert sweep["rows"][1]["high_end_error"] == three["range_ends"][1]["relative_error"]
    with (
        Image.open(out / "sweep-guidance.png") as stacked,
        Image.open(out / "guidance-3" / "sweep-ventricles.png") as one_strip,
    ):
        assert stacked.height == 2 * one_strip.height
    assert "| 3 |" in (out / "sweep.md").read_text()
