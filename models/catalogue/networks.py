"""Build the two networks of a model from its configuration (MONAI core classes, bundle kwargs)."""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from models.catalogue.config import ModelConfig


def build_autoencoder(config: ModelConfig, device: torch.device | str = "cpu") -> AutoencoderKL:
    """The KL autoencoder (compression model, Pinaya et al. 2022 section 2.2), randomly initialised."""
    with torch.device(device):
        return AutoencoderKL(**config.autoencoder)


def build_unet(config: ModelConfig, device: torch.device | str = "cpu") -> DiffusionModelUNet:
    """The conditioned diffusion UNet (Pinaya et al. 2022 section 2.2), randomly initialised."""
    with torch.device(device):
        return DiffusionModelUNet(**config.diffusion)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Parameter counts of both networks, built on the ``meta`` device (no memory, no init cost)."""
    return {
        "autoencoder": count_parameters(build_autoencoder(config, "meta")),
        "unet": count_parameters(build_unet(config, "meta")),
    }
