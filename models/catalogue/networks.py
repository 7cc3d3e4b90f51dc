"""Build the two networks of a model from its configuration (MONAI core classes, bundle kwargs)."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from models.catalogue.config import ModelConfig, WeightFile
from models.catalogue.weights import load_state_dict_strict, read_state_dict, verify_sha256
from models.errors import WeightsError


def build_autoencoder(config: ModelConfig, device: torch.device | str = "cpu") -> AutoencoderKL:
    """The KL autoencoder (compression model, Pinaya et al. 2022 section 2.2), randomly initialised."""
    with torch.device(device):
        return AutoencoderKL(**config.autoencoder)


def build_unet(config: ModelConfig, device: torch.device | str = "cpu") -> DiffusionModelUNet:
    """The conditioned diffusion UNet (Pinaya et al. 2022 section 2.2), randomly initialised."""
    with torch.device(device):
        return DiffusionModelUNet(**config.diffusion)


def load_weights(module: torch.nn.Module, model_dir: Path, entry: WeightFile, what: str) -> torch.nn.Module:
    """Load ``model_dir``'s weight file ``entry`` into ``module`` (strict), its sha256 checked first."""
    path = Path(model_dir) / entry.file
    verify_sha256(path, entry.sha256)
    load_state_dict_strict(module, read_state_dict(path), f"{path} ({what})")
    return module


def load_autoencoder(model_dir: Path, config: ModelConfig) -> AutoencoderKL:
    """The trained autoencoder of the model in ``model_dir`` (on the CPU)."""
    if config.weights is None:
        raise WeightsError(f"{model_dir}/model.json lists no weights: train its autoencoder first")
    return load_weights(build_autoencoder(config), model_dir, config.weights.autoencoder, "autoencoder")


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Parameter counts of both networks, built on the ``meta`` device (no memory, no init cost)."""
    return {
        "autoencoder": count_parameters(build_autoencoder(config, "meta")),
        "unet": count_parameters(build_unet(config, "meta")),
    }
