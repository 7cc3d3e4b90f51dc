"""The model's two volumes as a segmentation measures them: FreeSurfer's SAMSEG (Puonti et al. 2016,
"Fast and sequence-adaptive whole-brain segmentation using parametric Bayesian modeling", NeuroImage 143)
label volumes, from its ``samseg.stats``, mapped onto the conditioning's definitions.

- Ventricular CSF (UK Biobank data-field 25004, "volume of ventricular cerebrospinal fluid", not normalised):
  the lateral ventricles, their inferior horns, the 3rd and the 4th ventricle (:data:`VENTRICLE_LABELS`).
- Brain volume normalised for head size (data-field 25009: grey + white matter, field 25010, times the
  scaling of the subject's head to a standard head, field 25000, from SIENAX): grey and white matter of the
  cerebrum, cerebellum, deep grey nuclei, ventral diencephalon and brain stem, white-matter hypointensities
  included (:data:`BRAIN_LABELS`), times ``reference_icv / icv``: SAMSEG's own intracranial volume estimate
  (sbTIV) stands for head size, and the reference is the standard head's (:data:`MNI152_ICV_MM3`, the MNI152
  template's, as SIENAX scales to the MNI152 skull), so a standard-sized head keeps its brain volume.

Torch-free: the measuring workers are to run in SAMSEG's own environment.
"""

from __future__ import annotations

from dataclasses import dataclass

#: SAMSEG labels summed into ventricular CSF.
VENTRICLE_LABELS: tuple[str, ...] = (
    "Left-Lateral-Ventricle",
    "Right-Lateral-Ventricle",
    "Left-Inf-Lat-Vent",
    "Right-Inf-Lat-Vent",
    "3rd-Ventricle",
    "4th-Ventricle",
)
#: Left and right structures of SAMSEG's atlas that are brain grey or white matter.
_PAIRED_BRAIN = ("Cerebral-White-Matter", "Cerebral-Cortex", "Cerebellum-White-Matter", "Cerebellum-Cortex",
                 "Thalamus", "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala", "Accumbens-area",
                 "VentralDC")  # fmt: skip
#: SAMSEG labels summed into brain grey + white matter.
BRAIN_LABELS: tuple[str, ...] = (
    *(f"{side}-{name}" for name in _PAIRED_BRAIN for side in ("Left", "Right")),
    "Brain-Stem",
    "WM-hypointensities",
    "non-WM-hypointensities",
)
INTRACRANIAL = "Intra-Cranial"
#: The standard head's intracranial volume: SAMSEG's sbTIV of nilearn's MNI152 T1 template (1 mm) resampled
#: onto the ukb grid centred on the MNI brain (160x224x160, :func:`models.cohort.nifti.mni_centred_affine`),
#: measured here with ``run_samseg --threads 2`` (9 min 32 s; its grey + white matter 1,473,762 mm3,
#: ventricles 30,667 mm3).
MNI152_ICV_MM3 = 1889831.899527


class SegmentationError(ValueError):
    """A segmentation's volumes cannot be read or lack a label a measure needs."""


@dataclass(frozen=True)
class SegmentedVolumes:
    """A subject's volumes in mm3 as SAMSEG measured them."""

    ventricular_volume_mm3: float
    brain_grey_white_mm3: float
    intracranial_volume_mm3: float

    def brain_volume_mm3(self, reference_icv_mm3: float = MNI152_ICV_MM3) -> float:
        """Grey + white matter scaled to a head of ``reference_icv_mm3`` (the conditioning's brain volume)."""
        return self.brain_grey_white_mm3 * reference_icv_mm3 / self.intracranial_volume_mm3


def read_samseg_stats(text: str) -> dict[str, float]:
    """Label -> volume in mm3 from ``samseg.stats`` (lines ``# Measure NAME, VOLUME, mm^3``).

    Raises:
        SegmentationError: a line is not in that form.
    """
    volumes = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, _, rest = line.removeprefix("# Measure ").partition(", ")
        value, _, unit = rest.partition(", ")
        try:
            volumes[name] = float(value)
        except ValueError as err:
            raise SegmentationError(
                f"samseg.stats line {number} is not '# Measure NAME, VOLUME, mm^3': {line!r}"
            ) from err
        if not line.startswith("# Measure ") or unit.strip() != "mm^3":
            raise SegmentationError(f"samseg.stats line {number} is not '# Measure NAME, VOLUME, mm^3': {line!r}")
    return volumes


def segmented_volumes(volumes: dict[str, float]) -> SegmentedVolumes:
    """The measures' label sums from SAMSEG's label volumes.

    Raises:
        SegmentationError: a label of :data:`VENTRICLE_LABELS`, :data:`BRAIN_LABELS` or the intracranial
            volume is missing (another atlas than SAMSEG's default).
    """
    missing = [name for name in (*VENTRICLE_LABELS, *BRAIN_LABELS, INTRACRANIAL) if name not in volumes]
    if missing:
        raise SegmentationError(f"the segmentation lacks {', '.join(missing)}: not SAMSEG's default atlas?")
    return SegmentedVolumes(
        ventricular_volume_mm3=sum(volumes[name] for name in VENTRICLE_LABELS),
        brain_grey_white_mm3=sum(volumes[name] for name in BRAIN_LABELS),
        intracranial_volume_mm3=volumes[INTRACRANIAL],
    )
