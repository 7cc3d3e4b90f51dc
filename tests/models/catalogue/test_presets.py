"""The paper's exact configuration and the model directory format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from brainsynth.cli import main
from models.catalogue.config import ModelConfig, read_model_config
from models.catalogue.networks import parameter_counts
from models.catalogue.presets import demo, ukb
from models.errors import ModelConfigError
from models.inference.sampling import build_scheduler


def test_ukb_parameter_counts_match_the_released_weights() -> None:
    assert parameter_counts(ukb()) == {"autoencoder": 13_766_248, "unet": 553_168_899}


def test_ukb_geometry() -> None:
    config = ukb()
    assert config.image_shape == (160, 224, 160)
    assert config.voxel_size_mm == (1.0, 1.0, 1.0)
    assert config.latent_shape == (3, 20, 28, 20)
    assert config.scale_factor == 1.0


def test_ukb_noise_schedule() -> None:
    config = ukb().scheduler
    assert (config.schedule, config.beta_start, config.beta_end) == ("scaled_linear_beta", 0.0015, 0.0205)
    assert config.prediction_type == "epsilon" and config.clip_sample is False
    scheduler = build_scheduler(config, "ddim", 50)
    assert scheduler.betas[0].item() == pytest.approx(0.0015, rel=1e-5)
    assert scheduler.betas[-1].item() == pytest.approx(0.0205, rel=1e-5)
    assert scheduler.alphas_cumprod[999].item() == pytest.approx(9.69e-5, rel=1e-2)
    assert scheduler.timesteps.tolist() == list(range(980, -1, -20))


def test_demo_preset_keeps_topology_at_2mm_or_coarser() -> None:
    small, paper = demo(), ukb()
    assert min(small.voxel_size_mm) >= 2.0  # the issue allows 2 mm or coarser
    assert set(small.diffusion) == set(paper.diffusion) and set(small.autoencoder) == set(paper.autoencoder)
    assert small.diffusion["with_conditioning"] and small.diffusion["cross_attention_dim"] == 4
    assert small.diffusion["in_channels"] == 7
    assert small.conditioning.age == paper.conditioning.age  # volumes: the phantoms' span (DEMO_RANGES)
    assert small.conditioning.ventricular_volume_mm3.max < paper.conditioning.ventricular_volume_mm3.max
    counts = parameter_counts(small)
    assert counts["unet"] < parameter_counts(paper)["unet"] / 20


def test_model_json_round_trip_and_validation(tmp_path: Path) -> None:
    config = ukb()
    assert ModelConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json")))) == config
    broken = config.model_dump(mode="json")
    broken["image_shape"] = [150, 224, 160]
    with pytest.raises(ValidationError, match="divisible"):
        ModelConfig.model_validate(broken)
    broken = config.model_dump(mode="json")
    broken["diffusion"]["attention_levels"] = [False, True]
    (tmp_path / "model.json").write_text(json.dumps(broken))
    assert read_model_config(tmp_path, check_networks=False).diffusion["attention_levels"] == [False, True]
    with pytest.raises(ModelConfigError, match="diffusion network kwargs are invalid"):
        read_model_config(tmp_path)


def test_cli_models_json_lists_ukb_with_exact_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    entry = listed["ukb"]
    assert entry["parameters"] == {"autoencoder": 13_766_248, "unet": 553_168_899}
    assert entry["image_shape"] == [160, 224, 160]
    assert entry["conditioning"]["age"] == {"min": 44.0, "max": 82.0, "unit": "years", "description": "age at scan"}
    assert entry["ready"] is False


def test_networks_are_monai_core_classes() -> None:
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    from models.catalogue.networks import build_autoencoder, build_unet

    assert isinstance(build_autoencoder(ukb(), "meta"), AutoencoderKL)
    assert isinstance(build_unet(ukb(), "meta"), DiffusionModelUNet)
    assert torch.device("meta") == next(build_unet(ukb(), "meta").parameters()).device
