"""Shared fixtures: a tiny model with the paper's topology, small enough for CPU tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.catalogue.config import AUTOENCODER_FILE, UNET_FILE, ModelConfig, WeightFile, Weights, write_model_config
from models.catalogue.networks import build_autoencoder, build_unet
from models.catalogue.presets import ukb
from models.catalogue.weights import sha256_file
from models.cohort.nifti import mni_centred_affine


def tiny_config(name: str = "tiny") -> ModelConfig:
    """ukb's topology (hybrid conditioning, cross-attention at the deeper level) with a few channels."""
    base = ukb()
    return base.model_copy(
        update={
            "name": name,
            "version": "0.0.1",
            "autoencoder": {
                **base.autoencoder,
                "channels": [8, 8],
                "attention_levels": [False, False],
                "norm_num_groups": 4,
            },
            "diffusion": {
                **base.diffusion,
                "channels": [8, 16],
                "attention_levels": [False, True],
                "num_head_channels": [0, 16],
                "norm_num_groups": 4,
            },
            "image_shape": (16, 24, 16),
            "voxel_size_mm": (10.0, 10.0, 10.0),
            "affine": mni_centred_affine((16, 24, 16), 10.0),  # phantoms lie on MNI152: so must the grid
        }
    )


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter (the UNet's output conv is zero-initialised, which would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.03 * torch.randn(parameter.shape, generator=generator))
    return module


def tiny_networks(config: ModelConfig, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    return randomise(build_autoencoder(config), seed), randomise(build_unet(config), seed + 1)


def make_model_dir(path: Path, config: ModelConfig | None = None, seed: int = 0) -> Path:
    """A model directory with tiny random weights, written like a trained model's."""
    config = config or tiny_config()
    autoencoder, unet = tiny_networks(config, seed)
    path.mkdir(parents=True)
    torch.save(autoencoder.state_dict(), path / AUTOENCODER_FILE)
    torch.save(unet.state_dict(), path / UNET_FILE)
    weights = Weights(
        autoencoder=WeightFile(file=AUTOENCODER_FILE, sha256=sha256_file(path / AUTOENCODER_FILE), verified=True),
        unet=WeightFile(file=UNET_FILE, sha256=sha256_file(path / UNET_FILE), verified=True),
    )
    write_model_config(path, config.model_copy(update={"weights": weights}))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("zoo") / "tiny")


@pytest.fixture(autouse=True)
def _isolated_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the developer's own registered models."""
    monkeypatch.setenv("BRAINSYNTH_MODELS_DIR", str(tmp_path / "registered-models"))


# Real servers (no stand-ins): started once per session on free loopback ports, stopped at the end.
S3_ACCESS_KEY = "brainsynth-test"
S3_SECRET_KEY = "brainsynth-test-secret-key"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from service.localstack import start_s3

    server = start_s3(tmp_path_factory.mktemp("seaweedfs"), S3_ACCESS_KEY, S3_SECRET_KEY)
    yield server
    server.stop()
