"""NIfTI geometry and bytes: the paper grid's affine, the coarse grids, read-back and reproducible gzip."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from models.cohort.nifti import grid_affine, nifti_gz_bytes, to_nifti

BUNDLE_CROPPED_AFFINE = np.array(
    [[-1, 0, 0, 96.48149872], [0, 1, 0, -141.47715759], [0, 0, 1, -156.55375671], [0, 0, 0, 1]]
)


def test_paper_grid_affine_agrees_with_the_bundle_saver_crop() -> None:
    affine = np.array(grid_affine(1.0))
    # Voxel (i, j, k) of the full grid is voxel (i - 5, j - 5, k) of the bundle's cropped output.
    for voxel in ((5, 5, 0), (100, 30, 77), (154, 218, 144)):
        full = affine @ np.array([*voxel, 1.0])
        cropped = BUNDLE_CROPPED_AFFINE @ np.array([voxel[0] - 5, voxel[1] - 5, voxel[2], 1.0])
        np.testing.assert_allclose(full, cropped)
    assert nib.aff2axcodes(affine) == ("L", "A", "S")


def test_coarse_grid_covers_the_same_field_of_view() -> None:
    fine, coarse = np.array(grid_affine(1.0)), np.array(grid_affine(2.0))
    # The centre of coarse voxel 0 is the centre of the first 2x2x2 block of fine voxels.
    np.testing.assert_allclose(coarse @ [0, 0, 0, 1], fine @ [0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(coarse @ [79, 111, 79, 1], fine @ [158.5, 222.5, 158.5, 1])


def test_nifti_geometry_read_back(tmp_path: Path) -> None:
    volume = np.linspace(-0.2, 1.3, 80 * 112 * 80, dtype=np.float32).reshape(80, 112, 80)
    path = tmp_path / "t1.nii.gz"
    path.write_bytes(nifti_gz_bytes(to_nifti(volume, np.array(grid_affine(2.0)))))
    image = nib.load(path)
    assert image.shape == (80, 112, 80)
    assert image.header.get_zooms() == (2.0, 2.0, 2.0)
    assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
    sform, sform_code = image.get_sform(coded=True)
    qform, qform_code = image.get_qform(coded=True)
    assert int(sform_code) == 2 and int(qform_code) == 2
    np.testing.assert_allclose(sform, grid_affine(2.0), atol=1e-5)
    np.testing.assert_allclose(qform, grid_affine(2.0), atol=1e-5)
    assert image.get_data_dtype() == np.float32
    assert image.header.get_xyzt_units()[0] == "mm"
    data = image.get_fdata()
    assert data.min() == 0.0 and data.max() == 1.0  # clamped


def test_uint8_option_and_reproducible_gzip() -> None:
    volume = np.array([[[0.0, 0.5], [1.0, 2.0]]], dtype=np.float32)
    image = to_nifti(volume, np.eye(4), "uint8")
    assert image.get_data_dtype() == np.uint8
    assert np.asarray(image.dataobj).tolist() == [[[0, 128], [255, 255]]]
    first, second = nifti_gz_bytes(image), nifti_gz_bytes(to_nifti(volume, np.eye(4), "uint8"))
    assert first == second
    assert first[4:8] == b"\0\0\0\0"  # gzip MTIME field is zero
    assert gzip.decompress(first) == image.to_bytes()
