"""Subject previews: reoriented to RAS through the affine (any storage order gives the same picture), the
neurological convention (the subject's left on the image's left), one fixed window, labelled PNGs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from models.catalogue.presets import PRESETS
from models.dataset.previews import MIN_VIEW_PX, render_previews


def _volume_with_a_left_marker(shape: tuple[int, int, int] = (20, 28, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A RAS-stored volume (+x = the subject's right), grey 0.5, with a bright block on the subject's left
    and in front (low x, high y), through the middle axial slice."""
    volume = np.full(shape, 0.5, dtype=np.float32)
    volume[1:5, -6:-2, :] = 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -np.array(shape) + 1
    return volume, affine


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def test_the_subjects_left_and_front_are_on_the_images_left_and_top() -> None:
    volume, affine = _volume_with_a_left_marker()
    axial = _pixels(render_previews(volume, affine)["axial"])
    bright = np.argwhere(axial == 255)
    height, width = axial.shape
    assert len(bright) > 0
    assert bright[:, 1].mean() < width / 3  # left third of the image: neurological convention
    assert bright[:, 0].mean() < height / 3  # anterior at the top
    assert min(axial.shape) >= MIN_VIEW_PX and np.median(axial) == 128  # fixed window: 0.5 -> grey 128


def test_the_storage_order_does_not_change_the_picture() -> None:
    """The same brain stored LAS (x flipped, as the bundle's grid) renders to the same bytes."""
    volume, affine = _volume_with_a_left_marker()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = volume.shape[0] - 1  # voxel i of the LAS array is voxel (n-1-i) of the RAS one
    las_affine = affine @ flip
    assert render_previews(volume[::-1].copy(), las_affine) == render_previews(volume, affine)


def test_views_hold_three_orthogonal_slices_of_one_scale_on_the_model_grid() -> None:
    config = PRESETS["demo"]()
    assert tuple(config.image_shape) == (40, 56, 40)
    affine = np.asarray(config.affine)
    rng = np.random.default_rng(0)
    previews = render_previews(rng.random((40, 56, 40), dtype=np.float32), affine)
    views, axial = Image.open(io.BytesIO(previews["views"])), Image.open(io.BytesIO(previews["axial"]))
    scale = axial.width // 40
    # axial (x by y), coronal (x by z), sagittal (y by z) side by side with two 6-pixel gaps
    assert views.width == scale * (40 + 40 + 56) + 12 and views.height == scale * 56
    assert views.mode == "L" and axial.size == (40 * scale, 56 * scale)
    assert render_previews(rng.random((40, 56, 40), dtype=np.float32), affine) != previews  # not a constant image
