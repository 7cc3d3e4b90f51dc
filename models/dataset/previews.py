"""PNG previews of a generated T1w: three orthogonal mid-slices, and the mid-axial slice alone (for a cohort
strip). Not part of the BIDS dataset: the service stores them beside it, outside the ``bids/`` tree.

Every preview is drawn the same way, so subjects compare at a glance: the volume is reoriented to RAS through
its affine (whatever the grid's storage order), shown in the neurological convention (the subject's left on
the image's left; anterior and superior up; sagittal with anterior on the right), with a fixed intensity
window [0, 1] (the generated images' range, so a darker brain looks darker), grey levels 0-255, nearest
neighbour upscaling to at least :data:`MIN_VIEW_PX` pixels, and each side labelled (L/R, A/P, S/I).
"""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

#: Smallest height or width, in pixels, a view is scaled up to (by an integer factor; nearest neighbour).
MIN_VIEW_PX = 160
#: Intensity mapped to black and to white: generated images are clipped to [0, 1].
WINDOW = (0.0, 1.0)
GAP_PX = 6
LABEL_GREY = 230


def to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume`` with its axes permuted and flipped so that they run along +x (R), +y (A), +z (S)."""
    current = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(("R", "A", "S")))
    return nib.orientations.apply_orientation(volume, transform)


def mid_slices(ras: np.ndarray) -> dict[str, tuple[np.ndarray, tuple[str, str, str, str]]]:
    """The three mid-slices of a RAS volume as display arrays (row 0 at the top) with their side labels
    (left, right, top, bottom), in the neurological convention."""
    x, y, z = (size // 2 for size in ras.shape)
    return {
        "axial": (ras[:, :, z].T[::-1], ("L", "R", "A", "P")),
        "coronal": (ras[:, y, :].T[::-1], ("L", "R", "S", "I")),
        "sagittal": (ras[x, :, :].T[::-1], ("P", "A", "S", "I")),
    }


def _grey(section: np.ndarray) -> np.ndarray:
    low, high = WINDOW
    return (np.clip((section.astype(np.float32) - low) / (high - low), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _scale(ras_shape: tuple[int, ...]) -> int:
    return max(1, -(-MIN_VIEW_PX // max(min(ras_shape), 1)))


def _labelled(section: np.ndarray, labels: tuple[str, str, str, str], scale: int) -> Image.Image:
    image = Image.fromarray(_grey(section), mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = labels
    middle_y, middle_x = image.height // 2 - 5, image.width // 2 - 3
    draw.text((3, middle_y), left, fill=LABEL_GREY)
    draw.text((image.width - 9, middle_y), right, fill=LABEL_GREY)
    draw.text((middle_x, 2), top, fill=LABEL_GREY)
    draw.text((middle_x, image.height - 12), bottom, fill=LABEL_GREY)
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _side_by_side(views: list[Image.Image]) -> Image.Image:
    height = max(view.height for view in views)
    canvas = Image.new(views[0].mode, (sum(view.width for view in views) + GAP_PX * (len(views) - 1), height))
    left = 0
    for view in views:
        canvas.paste(view, (left, (height - view.height) // 2))
        left += view.width + GAP_PX
    return canvas


def render_previews(volume: np.ndarray, affine: np.ndarray) -> dict[str, bytes]:
    """PNG bytes of ``views`` (axial, coronal and sagittal mid-slices side by side, one scale) and
    ``axial`` (the mid-axial view alone) of a volume on a grid with ``affine``."""
    ras = to_ras(np.asarray(volume), affine)
    scale = _scale(ras.shape)
    views = [_labelled(section, labels, scale) for section, labels in mid_slices(ras).values()]
    return {"views": _png(_side_by_side(views)), "axial": _png(views[0])}


def _outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a 2-D mask with a 4-neighbour outside it (its one-pixel outline)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_label_outlines(
    volume: np.ndarray, labels: np.ndarray, affine: np.ndarray, groups: list[tuple[list[int], tuple[int, int, int]]]
) -> bytes:
    """PNG of the three mid-slices, drawn as :func:`render_previews` draws ``views``, with the outline of each
    group of label values (a label map on the same grid, e.g. SAMSEG's) in its RGB colour, later groups on top."""
    ras, ras_labels = to_ras(np.asarray(volume), affine), to_ras(np.asarray(labels), affine)
    scale = _scale(ras.shape)
    views = []
    for (section, sides), (label_section, _) in zip(mid_slices(ras).values(), mid_slices(ras_labels).values(),
                                                    strict=True):  # fmt: skip
        pixels = np.array(_labelled(section, sides, scale).convert("RGB"))
        for values, colour in groups:
            edge = _outline(np.isin(label_section, values)).repeat(scale, axis=0).repeat(scale, axis=1)
            pixels[edge] = colour
        views.append(Image.fromarray(pixels, mode="RGB"))
    return _png(_side_by_side(views))
