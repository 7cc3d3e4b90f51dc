"""MNI152 phantoms with known volumes: training data that exists offline.

Each phantom is nilearn's MNI152 2009a template (1 mm, skull-stripped: brains, not heads) pulled through
a chain of smooth deformations chosen from covariates drawn like the UK Biobank cohort of Pinaya et al.
2022 (age 63.6 +- 7.5 in 44-82, 47 % male; ventricles larger and brains smaller with age):

1. ventricle enlargement or shrinkage: a radial scaling about the ventricles' centroid, blended to
   identity by a smooth weight around them;
2. global tissue loss ("atrophy"): tissue eroded from its boundary with CSF (:func:`erode_tissue`), so
   sulci widen and the cortex thins while deep white matter stays, the lost tissue turned into CSF
   (intensity included): a change of shape that an image shows, not a uniform darkening that intensity
   normalisation would undo;
3. a head-size scale g (0.92-1.08) and a smooth random displacement (a few mm);
4. intensity variation: a smooth multiplicative bias field, a gamma contrast change and Rician-like noise,
   then scaled to [0, 1] by the 99.5th percentile.

The mix (issue 20): by default 40 % of the phantoms are built towards covariates drawn evenly over the
model's accepted ranges (age, ventricles and brain uniform and independent, half female), the rest like the
UK Biobank cohort above, so a model trained on them has seen every value it accepts while most of its data
keeps the population's shape and correlations. Brain volumes above the template's own (about 1.68 million
mm3 of grey + white matter) cannot be built: atrophy removes tissue, it never adds it.

Volumes are measured on the deformed tissue and ventricle maps, sampled at twice the output resolution:
``ventricular_volume_mm3`` is the ventricles' volume at the phantom's own size (like UKB field 25004);
``brain_volume_mm3`` is grey + white matter divided by g**3, i.e. normalised for head size (like field
25009). These measured values are the phantom's participants.tsv covariates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from models.catalogue.config import ModelConfig
from models.cohort.conditioning import ConditioningRanges, Covariates, normalise
from models.cohort.design import participant_id, subject_seed
from models.cohort.nifti import to_nifti, write_nifti_gz
from models.dataset.bids import (
    BIDS_VERSION,
    SubjectRecord,
    dumps,
    package_version,
    participants_json,
    participants_tsv,
    require_empty_folder,
    sidecar_path,
    t1w_path,
)
from models.errors import ConditioningError

#: Phantoms are sampled at this many points per output voxel and axis, then averaged.
_SUPERSAMPLE = 2
#: Radius (mm) of the Gaussian weight that blends the ventricles' scaling into the identity around them.
_VENTRICLE_BLEND_MM = 40.0
#: The radial scalings of the ventricles the bisection searches (shrunk to ~5,000 mm3, grown past 65,000).
_VENTRICLE_SCALES = (0.2, 5.0)


@dataclass(frozen=True)
class Template:
    """The MNI152 maps at 1 mm (template voxel order, RAS affine)."""

    t1: np.ndarray
    grey: np.ndarray
    white: np.ndarray
    ventricles: np.ndarray
    affine: np.ndarray
    brain_centre_mm: np.ndarray
    ventricle_centre_mm: np.ndarray
    csf_intensity: float


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Load nilearn's MNI152 2009a maps (shipped with nilearn, no download) and derive a ventricle map.

    Ventricles: voxels whose CSF probability (mask - grey - white) exceeds 0.5, in connected components
    that reach the central 40 x 60 x 40 mm box around the brain's centre.
    """
    from nilearn import datasets

    t1_image = datasets.load_mni152_template(resolution=1)
    affine = t1_image.affine
    t1 = t1_image.get_fdata(dtype=np.float32)
    t1 /= np.percentile(t1[t1 > 0], 99.5)
    grey = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    white = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)
    csf = np.clip(mask - grey - white, 0.0, 1.0)

    brain_voxel = np.array(ndimage.center_of_mass(mask))
    brain_centre_mm = affine[:3, :3] @ brain_voxel + affine[:3, 3]
    # Lateral ventricles: large, confident CSF components just above the brain's centre (the cisterns lie
    # below it, the interhemispheric fissure far above); partial volumes kept within 2 voxels of them.
    labels, count = ndimage.label(csf > 0.7)
    ids = np.arange(1, count + 1)
    sizes = ndimage.sum(np.ones_like(csf), labels, ids)
    seeds = np.zeros(csf.shape, dtype=bool)
    for label_id, size in zip(ids, sizes, strict=True):
        if size < 2000:
            continue
        offset = np.array(ndimage.center_of_mass(labels == label_id)) - brain_voxel
        if abs(offset[0]) < 25 and abs(offset[1]) < 25 and 0 < offset[2] < 15:
            seeds |= labels == label_id
    ventricles = np.where(ndimage.binary_dilation(seeds, iterations=2), csf, 0.0).astype(np.float32)
    ventricle_voxel = np.array(ndimage.center_of_mass(ventricles))
    ventricle_centre_mm = affine[:3, :3] @ ventricle_voxel + affine[:3, 3]
    csf_intensity = float(np.median(t1[csf > 0.9]))
    return Template(t1, grey, white, ventricles, affine, brain_centre_mm, ventricle_centre_mm, csf_intensity)


@dataclass(frozen=True)
class PhantomTargets:
    """The covariates a phantom is built towards (measured values differ slightly)."""

    sex: str
    age: float
    ventricular_volume_mm3: float
    brain_volume_mm3: float
    head_scale: float


#: Share of phantoms drawn evenly over a model's accepted ranges (the rest are drawn like the UK Biobank
#: cohort): without them a model trained on phantoms sees ventricles of 9-35k mm3 only and extrapolates over
#: most of the 5-65k it accepts (issue 20).
DEFAULT_RANGE_FRACTION = 0.4


def draw_targets(
    rng: np.random.Generator, ranges: ConditioningRanges | None = None, range_fraction: float = 0.0
) -> PhantomTargets:
    """Covariates drawn like the paper's UK Biobank cohort (section 2.1), with volume trends by age and sex, or,
    for a share ``range_fraction`` of phantoms, evenly over ``ranges`` (age, ventricles and brain uniform and
    independent, sex half and half), so a model trained on them sees its whole accepted range.

    Ventricles: log-normal, median 20,000 mm3 at 63.6 years, x1.04 per year, x1.22 for males.
    Brain (head-size normalised): 1.50e6 mm3 at 63.6 years, -4,000 mm3 per year, sd 60,000 mm3.
    """
    if ranges is not None and range_fraction > 0 and rng.random() < range_fraction:
        age = float(rng.uniform(ranges.age.min, ranges.age.max))
        sex = "M" if rng.random() < 0.5 else "F"
        ventricles = float(rng.uniform(ranges.ventricular_volume_mm3.min, ranges.ventricular_volume_mm3.max))
        brain = float(rng.uniform(ranges.brain_volume_mm3.min, ranges.brain_volume_mm3.max))
        return PhantomTargets(sex, round(age, 2), ventricles, brain, float(rng.uniform(0.92, 1.08)))
    age = float(np.clip(rng.normal(63.6, 7.5), 44.0, 82.0))
    sex = "M" if rng.random() < 0.47 else "F"
    male = 1.0 if sex == "M" else 0.0
    log_v = np.log(20000.0) + 0.04 * (age - 63.6) + 0.2 * male + rng.normal(0.0, 0.35)
    ventricles = float(np.clip(np.exp(log_v), 7500.0, 160000.0))
    brain = float(np.clip(1.50e6 - 4000.0 * (age - 63.6) + rng.normal(0.0, 60000.0), 1.16e6, 1.78e6))
    return PhantomTargets(sex, round(age, 2), ventricles, brain, float(rng.uniform(0.92, 1.08)))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int, amplitude: float) -> np.ndarray:
    """A smooth random field: Gaussian noise on a coarse grid, cubic-upsampled to ``shape``."""
    noise = rng.normal(0.0, amplitude, size=(coarse, coarse, coarse)).astype(np.float32)
    zoom = [s / coarse for s in shape]
    return ndimage.zoom(noise, zoom, order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]


def erode_tissue(tissue: np.ndarray, target_voxels: float) -> np.ndarray:
    """Partial-volume erosion: ``clip((tissue - t) / (1 - t), 0, 1)`` with ``t`` in [0, 0.95] found by bisection
    so that the tissue sums to ``target_voxels`` (or as near as ``t``'s range allows; never grows tissue).

    Voxels of tissue fraction 1 keep it; the boundary voxels, where tissue and CSF share a voxel, lose it.
    """
    if tissue.sum() <= target_voxels:
        return tissue
    low, high = 0.0, 0.95
    for _ in range(30):
        threshold = (low + high) / 2
        kept = float(np.clip((tissue - threshold) / (1.0 - threshold), 0.0, 1.0).sum())
        low, high = (threshold, high) if kept > target_voxels else (low, threshold)
    threshold = (low + high) / 2
    return np.clip((tissue - threshold) / (1.0 - threshold), 0.0, 1.0).astype(tissue.dtype)


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # output grid, float32 in [0, 1]
    covariates: Covariates  # measured
    targets: PhantomTargets


def phantom_affine(image_shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The affine under which a phantom built on ``(image_shape, affine)`` lies on MNI152.

    :func:`make_phantom` centres the template's brain in the field of view, so the field of view's centre is
    the template's brain centre: the grid's own affine, translated by the difference. For a grid centred on
    the MNI brain already (:func:`models.cohort.nifti.mni_centred_affine`, the demo preset's) it is that affine.
    """
    matrix = np.asarray(affine, dtype=np.float64).copy()
    centre = matrix[:3, :3] @ ((np.asarray(image_shape, dtype=np.float64) - 1) / 2) + matrix[:3, 3]
    matrix[:3, 3] += load_template().brain_centre_mm - centre
    return matrix


def make_phantom(
    rng: np.random.Generator,
    image_shape: tuple[int, int, int],
    affine: np.ndarray,
    targets: PhantomTargets | None = None,
) -> Phantom:
    """Build one phantom on the grid ``(image_shape, affine)``; the brain is centred in the field of view
    (write it with :func:`phantom_affine`, under which it lies on MNI152).

    Args:
        rng: the phantom's random generator (all randomness comes from it).
        image_shape: output grid shape.
        affine: output voxel-to-world matrix (its voxel size sets the sampling; sampled at half of it).
        targets: covariates to build towards; drawn with :func:`draw_targets` when ``None``.
    """
    template = load_template()
    targets = targets or draw_targets(rng)
    affine = np.asarray(affine, dtype=np.float64)
    fine_shape = tuple(s * _SUPERSAMPLE for s in image_shape)
    # Fine-grid voxel centres in world mm, relative to the grid's centre.
    fine_affine = affine.copy()
    fine_affine[:3, :3] /= _SUPERSAMPLE
    fine_affine[:3, 3] = affine[:3, :3] @ np.full(3, (1 - _SUPERSAMPLE) / (2 * _SUPERSAMPLE)) + affine[:3, 3]
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in fine_shape], indexing="ij"))
    world = np.einsum("ij,j...->i...", fine_affine[:3, :3].astype(np.float32), grid)
    world += fine_affine[:3, 3, None, None, None].astype(np.float32)
    centre = fine_affine[:3, :3] @ (np.array(fine_shape) - 1) / 2 + fine_affine[:3, 3]
    p = world - centre[:, None, None, None].astype(np.float32)  # phantom space, mm, RAS axes

    # 3. head size and a smooth random displacement (pull-back: template point = f(p)).
    q = p / targets.head_scale
    for axis in range(3):
        q[axis] += _smooth_field(rng, fine_shape, 6, 2.0)
    # 1. ventricles: radial scaling s about their centroid, blended by a smooth weight; s is found by bisection
    # so that the ventricles measure their target (the blend magnifies less than a uniform scaling would).
    offset = (template.ventricle_centre_mm - template.brain_centre_mm).astype(np.float32)
    rel = q - offset[:, None, None, None]
    weight = np.exp(-((np.sqrt((rel**2).sum(0)) / _VENTRICLE_BLEND_MM) ** 2))
    inverse = np.linalg.inv(template.affine)
    fine_voxel_mm3 = float(abs(np.linalg.det(fine_affine[:3, :3])))

    def coordinates(scale: float) -> np.ndarray:
        """Template voxel coordinates of the fine grid's points under ventricle scaling ``scale``."""
        pulled = offset[:, None, None, None] + rel / (1.0 + (scale - 1.0) * weight)
        template_world = pulled + template.brain_centre_mm[:, None, None, None].astype(np.float32)
        coords = np.einsum("ij,j...->i...", inverse[:3, :3].astype(np.float32), template_world)
        return coords + inverse[:3, 3, None, None, None].astype(np.float32)

    def ventricle_volume(scale: float) -> float:
        pulled = ndimage.map_coordinates(template.ventricles, coordinates(scale), order=1, mode="constant")
        return float(pulled.sum()) * fine_voxel_mm3

    low, high = np.log(_VENTRICLE_SCALES[0]), np.log(_VENTRICLE_SCALES[1])
    for _ in range(12):  # the volume grows with the scale: bisect its logarithm
        middle = (low + high) / 2
        low, high = (middle, high) if ventricle_volume(float(np.exp(middle))) < targets.ventricular_volume_mm3 else (
            low, middle)  # fmt: skip
    coords = coordinates(float(np.exp((low + high) / 2)))

    def pull(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0)

    t1, grey, white, ventricles = (pull(v) for v in (template.t1, template.grey, template.white, template.ventricles))

    # 2. atrophy: erode tissue where it meets CSF so the head-size-normalised brain volume approaches its
    # target; deep white matter (tissue fraction 1) is kept, so the loss widens sulci and thins cortex.
    normalise_head = targets.head_scale**3
    tissue = grey + white
    eroded = erode_tissue(tissue, targets.brain_volume_mm3 * normalise_head / fine_voxel_mm3)
    kept = np.divide(eroded, tissue, out=np.ones_like(tissue), where=tissue > 1e-3)
    # A voxel's tissue intensity above CSF, (t1 - csf) / tissue, is lost in proportion to the tissue lost.
    t1 = t1 - (1.0 - kept) * np.clip(t1 - template.csf_intensity, 0.0, None)
    grey, white = grey * kept, white * kept

    # 4. intensity variation.
    bias = np.exp(_smooth_field(rng, fine_shape, 4, 0.08))
    gamma = float(rng.uniform(0.85, 1.15))
    sigma = float(rng.uniform(0.01, 0.03))
    t1 = np.clip(t1, 0.0, None) ** gamma * bias
    noisy = np.sqrt((t1 + rng.normal(0.0, sigma, t1.shape)) ** 2 + rng.normal(0.0, sigma, t1.shape) ** 2)
    image = noisy.reshape(*[v for s in image_shape for v in (s, _SUPERSAMPLE)]).mean(axis=(1, 3, 5))
    image = np.clip(image / np.percentile(image, 99.5), 0.0, 1.0).astype(np.float32)

    covariates = Covariates(
        sex=targets.sex,  # type: ignore[arg-type]
        age=targets.age,
        ventricular_volume_mm3=round(float(ventricles.sum()) * fine_voxel_mm3, 1),
        brain_volume_mm3=round(float((grey + white).sum()) * fine_voxel_mm3 / normalise_head, 1),
    )
    return Phantom(image, covariates, targets)


def write_phantom_cohort(
    n_subjects: int,
    seed: int,
    out_dir: Path,
    config: ModelConfig,
    callback: Callable[[int, int], None] | None = None,
    range_fraction: float = DEFAULT_RANGE_FRACTION,
    ventricle_range: tuple[float, float] | None = None,
) -> Path:
    """Write ``n_subjects`` phantoms on the grid of ``config`` as a BIDS dataset (new or empty folder).

    participants.tsv holds the measured covariates; each sidecar also records the targets and the seed.
    Phantom ``i`` uses ``numpy.random.default_rng(subject_seed(seed, i))``; a share ``range_fraction`` of them
    is drawn evenly over ``config``'s accepted ranges (:func:`draw_targets`; 0: all like the UK Biobank);
    ``ventricle_range`` (lo, hi) in mm3, inside the accepted range, narrows that share's ventricles to lo-hi
    (phantoms for the ends of the range).
    """
    if not 0 <= range_fraction <= 1:
        raise ConditioningError("range_fraction", f"must be between 0 and 1, got {range_fraction}")
    ranges = config.conditioning
    if ventricle_range is not None:
        accepted = ranges.ventricular_volume_mm3
        low, high = ventricle_range
        if not accepted.min <= low < high <= accepted.max:
            raise ConditioningError(
                "ventricle_range",
                f"must be lo < hi within the model's accepted {accepted.min:g}-{accepted.max:g} mm3, got "
                f"{low:g}-{high:g}",
            )
        narrowed = accepted.model_copy(update={"min": float(low), "max": float(high)})
        ranges = ranges.model_copy(update={"ventricular_volume_mm3": narrowed})
    if not 1 <= n_subjects <= 100_000:
        raise ConditioningError("n_subjects", f"must be between 1 and 100000, got {n_subjects}")
    out_dir = require_empty_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": f"BrainSynth MNI152 phantoms ({n_subjects}, seed {seed})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "derived from the MNI152 2009a template as shipped by nilearn; synthetic phantoms",
        "GeneratedBy": [
            {
                "Name": "BrainSynth phantoms",
                "Version": package_version(),
                "Description": "MNI152 template deformed per covariates; volumes measured on deformed maps",
            }
        ],
    }
    (out_dir / "dataset_description.json").write_text(dumps(description))
    (out_dir / "README").write_text(
        f"# {description['Name']}\n\nPhantoms made from the MNI152 2009a template (as shipped by nilearn) by "
        "`brainsynth phantoms`: not scans of people. participants.tsv holds volumes measured on each phantom's "
        "deformed tissue and ventricle maps; each sidecar records the targets and the seed. "
        f"{range_fraction:.0%} of the phantoms were built towards covariates drawn evenly over the model's accepted "
        f"ranges (ventricles {ranges.ventricular_volume_mm3.min:g}-{ranges.ventricular_volume_mm3.max:g} mm3), the "
        "others like the UK Biobank cohort.\n"
    )
    (out_dir / "participants.json").write_text(dumps(participants_json(config)))
    affine = np.asarray(config.affine)
    on_mni = phantom_affine(config.image_shape, affine)  # the files' geometry: each phantom lies on MNI152
    records = []
    for index in range(n_subjects):
        subject = subject_seed(seed, index)
        rng = np.random.default_rng(subject)
        targets = draw_targets(rng, ranges, range_fraction)
        phantom = make_phantom(rng, config.image_shape, affine, targets)
        pid = participant_id(index)
        conditioning = normalise(phantom.covariates, config.conditioning, extrapolate=True)
        records.append(SubjectRecord(pid, phantom.covariates, conditioning, subject))
        path = out_dir / t1w_path(pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_nifti_gz(path, to_nifti(phantom.image, on_mni, description=f"MNI152 phantom seed {subject}"))
        sidecar = {
            "SyntheticData": True,
            "Phantom": "MNI152 2009a template, deformed (brainsynth phantoms)",
            "Seed": subject,
            "Targets": asdict(phantom.targets),
            "MeasuredOn": "deformed tissue and ventricle maps at half the voxel size",
        }
        (out_dir / sidecar_path(pid)).write_text(dumps(sidecar))
        if callback is not None:
            callback(index + 1, n_subjects)
    (out_dir / "participants.tsv").write_text(participants_tsv(records))
    return out_dir
