"""Measuring ventricular and brain volume on generated images: a small CNN regressor ("volume probe").

The paper measures conditioning fidelity with SynthSeg volumes. No segmentation network or labelled real
data exists offline here, so the project trains its own measurement on phantoms, whose volumes are known
exactly (:mod:`models.training.phantoms`): MONAI's ``Regressor`` maps an image on the model grid to
(log ventricular volume, head-size-normalised brain volume), both standardised. It is trained with
intensity augmentation (gamma, bias field, noise, blur, left-right flips, one-voxel shifts) so that it
measures anatomy rather than one phantom's look, and validated on phantoms of another seed; that accuracy
is recorded with the probe and in every evaluation report. A probe measures images on its own grid only.

A model's images are decoded by its autoencoder, which draws smoother images than phantoms: a probe trained on
phantoms alone read brain volume on the demo autoencoder's reconstructions of held-out phantoms at r 0.07 (0.96
on the phantoms themselves). With ``decoder`` set, the probe also trains on its phantoms as that autoencoder
reconstructs them (encode to the posterior mean, decode), labelled with the phantoms' volumes, and is validated
on held-out phantoms and on their reconstructions alike; both are recorded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import Regressor

from models.catalogue.config import PROBE_JSON, PROBE_WEIGHTS, ModelConfig
from models.cohort.design import read_subjects_tsv
from models.dataset.qc import agreement
from models.errors import BrainSynthError
from models.training.data import load_training_set, training_folders

CHANNELS = (8, 16, 32, 64)


class ProbeError(BrainSynthError):
    """A volume probe is missing or does not fit the images it is asked to measure."""


@dataclass(frozen=True)
class ProbeInfo:
    """What a probe was trained on and how well it measures held-out phantoms."""

    image_shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    #: mean and std of log(ventricular volume) and of brain volume over the training phantoms
    target_mean: tuple[float, float]
    target_std: tuple[float, float]
    #: covariate ranges of the training phantoms (the span an evaluation should request)
    ventricular_range_mm3: tuple[float, float]
    brain_range_mm3: tuple[float, float]
    steps: int
    seed: int
    validation: dict[str, float]
    #: sha256 of the autoencoder whose reconstructions the probe also trained on (``None``: phantoms only)
    decoder_sha256: str | None = None


def build_probe(image_shape: tuple[int, int, int]) -> Regressor:
    return Regressor(in_shape=(1, *image_shape), out_shape=(2,), channels=CHANNELS, strides=(2, 2, 2, 2))


def _smooth_bias(generator: torch.Generator, batch: int, shape: tuple[int, ...], strength: float) -> torch.Tensor:
    coarse = torch.randn((batch, 1, 3, 4, 3), generator=generator) * strength
    return torch.exp(torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True))


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random gamma, smooth bias field, blur, noise, left-right flip and one-voxel shifts, then [0, 1]."""
    batch, shape = images.shape[0], tuple(images.shape[2:])
    gamma = torch.empty((batch, 1, 1, 1, 1)).uniform_(0.75, 1.3, generator=generator)
    out = images.clamp(min=0) ** gamma * _smooth_bias(generator, batch, shape, 0.1)
    if torch.rand((), generator=generator) < 0.5:  # blur: generated images are smoother than phantoms
        kernel = torch.tensor([0.25, 0.5, 0.25])
        for axis in range(3):
            view = [1, 1, 1, 1, 1]
            view[2 + axis] = 3
            weights = kernel.view(*view)
            padding = [0, 0, 0]
            padding[axis] = 1
            out = torch.nn.functional.conv3d(out, weights, padding=tuple(padding))
    out = out + torch.randn(out.shape, generator=generator) * torch.empty(()).uniform_(0.0, 0.04, generator=generator)
    if torch.rand((), generator=generator) < 0.5:
        out = out.flip(2)  # x is left-right on the model grid
    shifts = [int(s) for s in torch.randint(-1, 2, (3,), generator=generator)]
    out = torch.roll(out, shifts=shifts, dims=(2, 3, 4))
    return out.clamp(0.0, 1.0)


def _targets(bids_dirs: Path | Sequence[Path]) -> np.ndarray:
    """(log ventricles, brain) per subject of the folders, in :func:`load_training_set`'s order."""
    tables = [folder / "participants.tsv" for folder in training_folders(bids_dirs)]
    subjects = [s for table in tables for s in read_subjects_tsv(table, cohort_seed=0)]
    return np.array([[math.log(s.covariates.ventricular_volume_mm3), s.covariates.brain_volume_mm3] for s in subjects])


class VolumeProbe:
    """A trained probe: ``measure(images)`` -> (ventricular volume, brain volume) in mm3 per image."""

    def __init__(self, network: Regressor, info: ProbeInfo) -> None:
        self.network = network.eval()
        self.info = info

    @classmethod
    def load(cls, directory: Path) -> VolumeProbe:
        directory = Path(directory)
        if not (directory / PROBE_JSON).is_file():
            raise ProbeError(
                f"no volume probe in {directory}: train one with `brainsynth train volumes --data PHANTOMS "
                f"--validation OTHER_PHANTOMS --out {directory}`"
            )
        raw = json.loads((directory / PROBE_JSON).read_text())
        info = ProbeInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        network = build_probe(info.image_shape)
        network.load_state_dict(torch.load(directory / PROBE_WEIGHTS, map_location="cpu", weights_only=True))
        return cls(network, info)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.network.state_dict(), directory / PROBE_WEIGHTS)
        (directory / PROBE_JSON).write_text(json.dumps(asdict(self.info), indent=2) + "\n")

    @torch.inference_mode()
    def measure(self, images: torch.Tensor) -> np.ndarray:
        """(N, 2) volumes in mm3 (ventricles, head-size-normalised brain) of images (N, 1, X, Y, Z) in [0, 1]."""
        if tuple(images.shape[2:]) != tuple(self.info.image_shape):
            raise ProbeError(f"the probe measures {self.info.image_shape} images, got {tuple(images.shape[2:])}")
        out = []
        for start in range(0, images.shape[0], 16):
            out.append(self.network(images[start : start + 16].float().cpu()))
        z = torch.cat(out).numpy().astype(np.float64)
        values = z * np.array(self.info.target_std) + np.array(self.info.target_mean)
        return np.stack([np.exp(values[:, 0]), values[:, 1]], axis=1)

    def measure_volume(self, volume: np.ndarray) -> tuple[float, float]:
        """(ventricular, brain) volume in mm3 of one generated volume (X, Y, Z) as decoded (clipped to [0, 1]
        first, as the evaluation measures it)."""
        image = torch.from_numpy(np.clip(volume, 0.0, 1.0)[None, None]).float()
        ventricles, brain = self.measure(image)[0]
        return float(ventricles), float(brain)


@torch.inference_mode()
def reconstruct(autoencoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` (N, 1, X, Y, Z) encoded to their posterior mean and decoded, clipped to [0, 1]."""
    autoencoder.eval()
    out = [autoencoder.decode(autoencoder.encode(batch)[0]) for batch in images.split(8)]
    return torch.cat(out).clamp(0.0, 1.0)


def _scores(truth: np.ndarray, measured: np.ndarray, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}{name}_{key}": value
        for name, column, values in (("ventricles", 0, np.exp(truth[:, 0])), ("brain", 1, truth[:, 1]))
        for key, value in agreement(values, measured[:, column]).items()
    }


def train_probe(
    config: ModelConfig,
    data: Path | Sequence[Path],
    validation: Path,
    *,
    steps: int = 1500,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    decoder: torch.nn.Module | None = None,
    decoder_sha256: str | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> VolumeProbe:
    """Train a probe on the phantoms in ``data`` (one folder or several) and validate it on those in
    ``validation``; with ``decoder`` (a trained autoencoder on the same grid), on their reconstructions too."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images = load_training_set(data, config).images
    targets = _targets(data)
    if decoder is not None:
        images = torch.cat((images, reconstruct(decoder, images)))
        targets = np.concatenate((targets, targets))
    mean, std = targets.mean(0), targets.std(0)
    z = torch.tensor((targets - mean) / std, dtype=torch.float32)
    network = build_probe(tuple(config.image_shape))
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    network.train()
    for step in range(1, steps + 1):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        prediction = network(augment(images[index], generator))
        loss = torch.nn.functional.mse_loss(prediction, z[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if callback is not None:
            callback(step, loss.item())
    info = ProbeInfo(
        image_shape=tuple(config.image_shape),  # type: ignore[arg-type]
        voxel_size_mm=tuple(config.voxel_size_mm),  # type: ignore[arg-type]
        target_mean=(float(mean[0]), float(mean[1])),
        target_std=(float(std[0]), float(std[1])),
        ventricular_range_mm3=(float(np.exp(targets[:, 0].min())), float(np.exp(targets[:, 0].max()))),
        brain_range_mm3=(float(targets[:, 1].min()), float(targets[:, 1].max())),
        steps=steps,
        seed=seed,
        validation={},
        decoder_sha256=decoder_sha256 if decoder is not None else None,
    )
    probe = VolumeProbe(network, info)
    held_out = load_training_set(validation, config).images
    truth = _targets(validation)
    scores = _scores(truth, probe.measure(held_out))
    if decoder is not None:
        scores |= _scores(truth, probe.measure(reconstruct(decoder, held_out)), prefix="decoded_")
    probe.info = ProbeInfo(**{**asdict(info), "validation": {"n": float(len(truth)), **scores}})
    return probe
