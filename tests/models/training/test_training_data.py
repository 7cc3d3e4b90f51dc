"""A user's MNI-registered T1w reaches the model grid whole, by world coordinates, in any orientation and
voxel size; an image that would lose its brain is refused, naming the file and what to do."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to
from nilearn import datasets

from models.catalogue.presets import demo, ukb
from models.cohort.conditioning import Covariates
from models.dataset.bids import SubjectRecord, participants_tsv
from models.training.data import TrainingDataError, load_training_set, signal_inside


def _variant(resolution: int, orientation: str) -> nib.Nifti1Image:
    """nilearn's MNI152 T1 at ``resolution`` mm, its array stored RAS (as shipped) or LAS (x flipped)."""
    image = datasets.load_mni152_template(resolution=resolution)
    data, affine = image.get_fdata(dtype=np.float32), image.affine.copy()
    if orientation == "LAS":
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        flip[0, 3] = data.shape[0] - 1
        data, affine = data[::-1].copy(), affine @ flip
    return nib.Nifti1Image(data, affine)


def _training_folder(root: Path, images: list[nib.Nifti1Image]) -> Path:
    records = []
    for index, image in enumerate(images):
        pid = f"sub-{index + 1:06d}"
        (root / pid / "anat").mkdir(parents=True)
        nib.save(image, root / pid / "anat" / f"{pid}_T1w.nii.gz")
        records.append(SubjectRecord(pid, Covariates("F", 60.0, 30000.0, 1500000.0), (0.0, 0.5, 0.5, 0.5), index))
    (root / "participants.tsv").write_text(participants_tsv(records))
    return root


VARIANTS = [(1, "RAS"), (1, "LAS"), (2, "RAS"), (2, "LAS")]


def test_an_mni_registered_template_keeps_its_brain_on_the_demo_grid(tmp_path: Path) -> None:
    config = demo()
    images = [_variant(r, o) for r, o in VARIANTS]
    mask = datasets.load_mni152_brain_mask(resolution=1)
    for (resolution, orientation), image in zip(VARIANTS, images, strict=True):
        kept = signal_inside(image.get_fdata(dtype=np.float32), image.affine, config.image_shape,
                             np.asarray(config.affine))  # fmt: skip
        assert kept >= 0.98, (resolution, orientation, kept)
        brain = resample_from_to(mask, image, order=0).get_fdata() > 0.5
        brain_kept = signal_inside(np.where(brain, image.get_fdata(dtype=np.float32), 0.0), image.affine,
                                   config.image_shape, np.asarray(config.affine))  # fmt: skip
        assert brain_kept >= 0.98, (resolution, orientation, brain_kept)
    loaded = load_training_set(_training_folder(tmp_path / "data", images), config).images[:, 0].numpy()
    assert loaded.shape == (4, *config.image_shape)
    # the same brain wherever its array starts: RAS and LAS files give the same training image
    np.testing.assert_allclose(loaded[0], loaded[1], atol=1e-5)
    np.testing.assert_allclose(loaded[2], loaded[3], atol=1e-5)
    grid_mask = resample_from_to(mask, (config.image_shape, np.asarray(config.affine)), order=0).get_fdata() > 0.5
    for volume in loaded:  # the brain is inside the grid and bright where the template's brain is
        assert volume[grid_mask].mean() > 3 * volume[~grid_mask].mean()


def test_an_image_that_would_lose_its_brain_is_refused_with_what_to_do(tmp_path: Path) -> None:
    # the ukb saver's field of view holds an MNI brain only up to z = +3 mm: most of it would be cut away
    folder = _training_folder(tmp_path / "data", [_variant(2, "RAS")])
    with pytest.raises(TrainingDataError) as refused:
        load_training_set(folder, ukb())
    message = str(refused.value)
    assert "sub-000001_T1w.nii.gz" in message and "% of its non-background signal" in message
    assert "register the image to MNI152" in message
    # an image far from where it should be (translated by 200 mm) is refused on the demo grid too
    image = _variant(2, "RAS")
    moved = nib.Nifti1Image(image.get_fdata(dtype=np.float32), image.affine @ _translation(200.0))
    with pytest.raises(TrainingDataError, match="only 0%"):
        load_training_set(_training_folder(tmp_path / "moved", [moved]), demo())


def _translation(mm: float) -> np.ndarray:
    matrix = np.eye(4)
    matrix[2, 3] = mm / 2.0  # voxels of 2 mm
    return matrix
