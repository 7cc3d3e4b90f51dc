"""Resumable training state, CSV loss logs and writing finished weights into a model directory."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch

from models.catalogue.config import ModelConfig, WeightFile, Weights, read_model_config, write_model_config
from models.catalogue.weights import sha256_file


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a crash mid-write leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_state(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` when training starts fresh."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class LossLog:
    """Appends one CSV row per logged step; the header is written once."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerow(columns)

    def write(self, row: dict[str, float | int]) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([row[c] for c in self.columns])


def register_weights(
    model_dir: Path, role: str, module: torch.nn.Module, file_name: str, **updates: Any
) -> ModelConfig:
    """Save ``module``'s state dict as ``file_name`` and record its sha256 in ``model.json``.

    Training the autoencoder again invalidates the UNet (its latents change), so it is dropped.
    """
    target = model_dir / file_name
    torch.save(module.state_dict(), target)
    entry = WeightFile(file=file_name, sha256=sha256_file(target), verified=True, source="trained by brainsynth")
    config = read_model_config(model_dir)
    if role == "autoencoder":
        weights = Weights(autoencoder=entry)
    else:
        assert config.weights is not None
        weights = Weights(autoencoder=config.weights.autoencoder, unet=entry)
    updated = config.model_copy(update={"weights": weights, **updates})
    write_model_config(model_dir, updated)
    return updated
