"""Training data: a BIDS folder of T1w NIfTI images with a participants.tsv of covariates.

Every image is resampled to the model grid (shape and affine from ``model.json``, trilinear, by world
coordinates) when its grid differs, then min-max scaled to [0, 1] per volume (as the bundle's data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from models.conditioning import normalise
from models.config import ModelConfig
from models.design import read_subjects_tsv
from models.errors import BrainSynthError


class TrainingDataError(BrainSynthError):
    """The training folder is missing files or holds unusable images."""


@dataclass(frozen=True)
class TrainingSet:
    """Images (N, 1, X, Y, Z) in [0, 1] on the model grid and their conditioning (N, 4)."""

    images: torch.Tensor
    conditioning: torch.Tensor
    participant_ids: list[str]


def _to_model_grid(image: nib.Nifti1Image, config: ModelConfig) -> np.ndarray:
    target_affine = np.asarray(config.affine)
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise TrainingDataError(f"expected a 3D image, got shape {data.shape}")
    if data.shape == tuple(config.image_shape) and np.allclose(image.affine, target_affine, atol=1e-3):
        return data
    from nibabel.processing import resample_from_to

    resampled = resample_from_to(nib.Nifti1Image(data, image.affine), (config.image_shape, target_affine), order=1)
    return np.asarray(resampled.dataobj, dtype=np.float32)


def load_training_set(bids_dir: Path, config: ModelConfig) -> TrainingSet:
    """Read every subject listed in ``bids_dir/participants.tsv`` (columns as written by ``brainsynth``)."""
    bids_dir = Path(bids_dir)
    table = bids_dir / "participants.tsv"
    if not table.is_file():
        raise TrainingDataError(f"{table} not found: --data must be a BIDS folder with participants.tsv")
    subjects = read_subjects_tsv(table, cohort_seed=0)
    images, vectors = [], []
    for subject in subjects:
        path = bids_dir / subject.participant_id / "anat" / f"{subject.participant_id}_T1w.nii.gz"
        if not path.is_file():
            raise TrainingDataError(f"{path} not found (listed in participants.tsv)")
        data = _to_model_grid(nib.load(path), config)
        low, high = float(data.min()), float(data.max())
        if high <= low:
            raise TrainingDataError(f"{path} is constant")
        images.append((data - low) / (high - low))
        vectors.append(normalise(subject.covariates, config.conditioning, extrapolate=True))
    return TrainingSet(
        images=torch.from_numpy(np.stack(images)[:, None]),
        conditioning=torch.tensor(vectors, dtype=torch.float32),
        participant_ids=[s.participant_id for s in subjects],
    )
