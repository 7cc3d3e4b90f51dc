"""Training data: a BIDS folder of T1w NIfTI images with a participants.tsv of covariates.

Every image is resampled to the model grid (shape and affine from ``model.json``, trilinear, by world
coordinates) when its grid differs, then min-max scaled to [0, 1] per volume (as the bundle's data). An
image whose signal falls largely outside the grid (not registered to the space the grid covers) is refused
rather than silently cut: at least :data:`MIN_SIGNAL_KEPT` of its non-background signal must land inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from models.catalogue.config import ModelConfig
from models.cohort.conditioning import normalise
from models.cohort.design import read_subjects_tsv
from models.errors import BrainSynthError


class TrainingDataError(BrainSynthError):
    """The training folder is missing files or holds unusable images."""


#: Share of an image's non-background signal that must lie inside the model grid.
MIN_SIGNAL_KEPT = 0.95


def signal_inside(data: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int], grid_affine: np.ndarray) -> float:
    """Share of ``data``'s non-background signal (intensity above the 1st percentile, voxels over 5 % of the
    99.5th) whose voxel centres fall inside the grid ``(shape, grid_affine)``, located by world coordinates."""
    low = float(np.percentile(data, 1))
    weights = np.clip(data - low, 0, None)
    weights[weights < 0.05 * float(np.percentile(weights, 99.5))] = 0.0
    voxels = np.argwhere(weights > 0)
    if not len(voxels):
        return 0.0
    to_grid = np.linalg.inv(np.asarray(grid_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    coords = voxels @ to_grid[:3, :3].T + to_grid[:3, 3]
    inside = np.all((coords >= -0.5) & (coords <= np.asarray(shape) - 0.5), axis=1)
    values = weights[tuple(voxels.T)]
    return float(values[inside].sum() / values.sum())


@dataclass(frozen=True)
class TrainingSet:
    """Images (N, 1, X, Y, Z) in [0, 1] on the model grid and their conditioning (N, 4)."""

    images: torch.Tensor
    conditioning: torch.Tensor
    participant_ids: list[str]


def _to_model_grid(image: nib.Nifti1Image, config: ModelConfig, path: Path) -> np.ndarray:
    target_affine = np.asarray(config.affine)
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise TrainingDataError(f"{path}: expected a 3D image, got shape {data.shape}")
    if data.shape == tuple(config.image_shape) and np.allclose(image.affine, target_affine, atol=1e-3):
        return data
    kept = signal_inside(data, image.affine, config.image_shape, target_affine)
    if kept < MIN_SIGNAL_KEPT:
        shape = tuple(config.image_shape)
        centre = target_affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + target_affine[:3, 3]
        raise TrainingDataError(
            f"{path}: only {kept:.0%} of its non-background signal lies inside the model grid ({shape} voxels "
            f"of {config.voxel_size_mm[0]:g} mm, centred at ({centre[0]:.0f}, {centre[1]:.0f}, {centre[2]:.0f}) "
            f"mm; at least {MIN_SIGNAL_KEPT:.0%} is needed): register the image to MNI152 first (rigidly, e.g. "
            "FSL FLIRT or ANTs), or train with a preset whose grid covers it (the demo grid is centred on the "
            "MNI152 brain)"
        )
    from nibabel.processing import resample_from_to

    resampled = resample_from_to(nib.Nifti1Image(data, image.affine), (config.image_shape, target_affine), order=1)
    return np.asarray(resampled.dataobj, dtype=np.float32)


def training_folders(bids_dirs: Path | Sequence[Path]) -> list[Path]:
    """One BIDS folder or several, as a list (the order training reads them in)."""
    return [Path(bids_dirs)] if isinstance(bids_dirs, str | Path) else [Path(d) for d in bids_dirs]


def load_training_set(bids_dirs: Path | Sequence[Path], config: ModelConfig) -> TrainingSet:
    """Read every subject listed in each folder's ``participants.tsv`` (columns as written by ``brainsynth``),
    folder after folder."""
    images, vectors, ids = [], [], []
    for bids_dir in training_folders(bids_dirs):
        table = bids_dir / "participants.tsv"
        if not table.is_file():
            raise TrainingDataError(f"{table} not found: --data must be a BIDS folder with participants.tsv")
        subjects = read_subjects_tsv(table, cohort_seed=0)
        for subject in subjects:
            path = bids_dir / subject.participant_id / "anat" / f"{subject.participant_id}_T1w.nii.gz"
            if not path.is_file():
                raise TrainingDataError(f"{path} not found (listed in participants.tsv)")
            data = _to_model_grid(nib.load(path), config, path)
            low, high = float(data.min()), float(data.max())
            if high <= low:
                raise TrainingDataError(f"{path} is constant")
            images.append((data - low) / (high - low))
            vectors.append(normalise(subject.covariates, config.conditioning, extrapolate=True))
        ids.extend(s.participant_id for s in subjects)
    return TrainingSet(
        images=torch.from_numpy(np.stack(images)[:, None]),
        conditioning=torch.tensor(vectors, dtype=torch.float32),
        participant_ids=ids,
    )
