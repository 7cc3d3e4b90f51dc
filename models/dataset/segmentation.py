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

It also lays SAMSEG's outputs out as a BIDS derivative dataset inside the cohort (:data:`SAMSEG_DERIVATIVE`) and
runs ``run_samseg`` on one image (:func:`run_samseg`). Torch-free: the measuring workers run in SAMSEG's own
environment (its numpy 1.26), never in a torch worker's.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from models.cohort.nifti import nifti_gz_bytes
from models.dataset.bids import BIDS_VERSION, DEFAULT_QC_TOLERANCE, Measurement, dumps, t1w_path

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

    def measurement(self, tolerance: float = DEFAULT_QC_TOLERANCE) -> Measurement:
        """The two conditioning volumes as a subject's ``samseg`` measurement (rounded to 0.1 mm3)."""
        ventricles, brain = round(self.ventricular_volume_mm3, 1), round(self.brain_volume_mm3(), 1)
        return Measurement(ventricles, brain, "samseg", tolerance)


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


# -- the derivative dataset ------------------------------------------------------------------------------
#: SAMSEG's outputs inside a cohort's dataset: a BIDS derivative dataset of its own.
SAMSEG_DERIVATIVE = "derivatives/samseg"


def dseg_path(pid: str) -> str:
    """A subject's label map (SAMSEG's ``seg.mgz`` on the T1w image's grid and affine)."""
    return f"{SAMSEG_DERIVATIVE}/{t1w_path(pid).removesuffix('_T1w.nii.gz')}_dseg.nii.gz"


def volumes_path(pid: str) -> str:
    """A subject's per-structure volumes (SAMSEG's ``samseg.stats`` as a table)."""
    return f"{SAMSEG_DERIVATIVE}/{t1w_path(pid).removesuffix('_T1w.nii.gz')}_desc-samseg_volumes.tsv"


@dataclass(frozen=True)
class Label:
    """One label of SAMSEG's atlas: its FreeSurfer index (the value in the label map), name and colour."""

    index: int
    name: str
    color: str


def read_lookup_table(text: str) -> list[Label]:
    """Labels from SAMSEG's ``compressionLookupTable.txt`` (``FS_INDEX COMPRESSED_INDEX NAME R G B A`` lines).

    Raises:
        SegmentationError: a line is not in that form.
    """
    labels = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            index, red, green, blue = int(fields[0]), *(int(v) for v in fields[3:6])
        except (ValueError, IndexError) as err:
            raise SegmentationError(f"lookup table line {number} is not 'INDEX N NAME R G B A': {line!r}") from err
        labels.append(Label(index, fields[2], f"#{red:02x}{green:02x}{blue:02x}"))
    return sorted(labels, key=lambda label: label.index)


def dseg_tsv(labels: list[Label]) -> str:
    """``dseg.tsv``: the label map's values, their names and colours (BIDS derivatives, segmentations)."""
    rows = ["index\tname\tcolor", *(f"{label.index}\t{label.name}\t{label.color}" for label in labels)]
    return "\n".join(rows) + "\n"


def volumes_tsv(volumes: dict[str, float]) -> str:
    """A subject's SAMSEG volumes, one structure a row, as ``samseg.stats`` lists them."""
    rows = ["structure\tvolume_mm3", *(f"{name}\t{value!r}" for name, value in volumes.items())]
    return "\n".join(rows) + "\n"


def samseg_dataset_files(version: str, labels: list[Label]) -> dict[str, bytes]:
    """The derivative dataset's own files (relative to the cohort's root): its description, the labels, and the
    column descriptions every subject's volumes table inherits (BIDS inheritance)."""
    description = {
        "Name": "SAMSEG segmentations of the synthetic T1w images",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "SAMSEG",
            "Version": version,
            "Description": "run_samseg --threads N on each T1w image (Puonti et al. 2016, NeuroImage 143)",
            "CodeURL": "https://pypi.org/project/samseg/",
        }],
        "SourceDatasets": [{"URL": "../../"}],
    }  # fmt: skip
    volumes = {
        "structure": {"Description": "a SAMSEG label, or Intra-Cranial (its intracranial volume estimate, sbTIV)"},
        "volume_mm3": {"Description": "the structure's volume", "Units": "mm3"},
        "VentricleLabels": list(VENTRICLE_LABELS),
        "BrainLabels": list(BRAIN_LABELS),
        "ReferenceIntracranialVolume": MNI152_ICV_MM3,
        "Measures": "measured_ventricular_volume_mm3 = sum of VentricleLabels; measured_brain_volume_mm3 = sum of "
        "BrainLabels * ReferenceIntracranialVolume / Intra-Cranial (participants.tsv of the cohort)",
    }
    return {
        f"{SAMSEG_DERIVATIVE}/dataset_description.json": dumps(description).encode(),
        f"{SAMSEG_DERIVATIVE}/dseg.tsv": dseg_tsv(labels).encode(),
        f"{SAMSEG_DERIVATIVE}/desc-samseg_volumes.json": dumps(volumes).encode(),
    }


def dseg_nifti(segmentation: nib.spatialimages.SpatialImage, reference: nib.Nifti1Image) -> bytes:
    """SAMSEG's label map as ``.nii.gz`` bytes on the T1w image's grid, with exactly its affine.

    Raises:
        SegmentationError: the label map is not on the image's grid (shape, or affine beyond 1e-3 mm).
    """
    labels = np.asarray(segmentation.dataobj)
    if labels.shape != reference.shape[:3]:
        raise SegmentationError(f"the label map's grid {labels.shape} is not the image's {reference.shape[:3]}")
    if not np.allclose(segmentation.affine, reference.affine, atol=1e-3):
        raise SegmentationError("the label map's affine is not the image's: SAMSEG resampled it")
    image = nib.Nifti1Image(labels.astype(np.int16), reference.affine)
    image.set_sform(reference.affine, code=int(reference.header["sform_code"]))
    image.set_qform(reference.affine, code=int(reference.header["qform_code"]))
    image.header.set_intent("label")
    image.header["descrip"] = b"SAMSEG labels (FreeSurfer indices, dseg.tsv)"
    return nifti_gz_bytes(image)


#: Outline colours of the labels preview: brain grey + white matter, then the ventricles on top.
BRAIN_OUTLINE, VENTRICLE_OUTLINE = (240, 200, 40), (230, 50, 50)


def label_outlines_png(image: bytes, dseg: bytes, labels: list[Label]) -> bytes:
    """The subject's mid-slices with the outlines of what makes its two measures (brain: yellow; ventricles:
    red), from its ``.nii.gz`` image and label map (:func:`models.dataset.previews.render_label_outlines`)."""
    from models.dataset.previews import render_label_outlines

    index = {label.name: label.index for label in labels}
    t1w = nib.Nifti1Image.from_bytes(gzip.decompress(image))
    segmentation = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(dseg)).dataobj)
    groups = [([index[n] for n in BRAIN_LABELS if n in index], BRAIN_OUTLINE),
              ([index[n] for n in VENTRICLE_LABELS if n in index], VENTRICLE_OUTLINE)]  # fmt: skip
    return render_label_outlines(np.asarray(t1w.dataobj), segmentation, t1w.affine, groups)


# -- running SAMSEG -------------------------------------------------------------------------------------
class SamsegStopped(RuntimeError):
    """SAMSEG was stopped because its subject's cohort was canceled or deleted."""


@dataclass(frozen=True)
class SamsegResult:
    """One image's SAMSEG run: its label volumes and label map, in the derivative dataset's files."""

    volumes: dict[str, float]
    dseg: bytes
    seconds: float

    def measured(self) -> SegmentedVolumes:
        return segmented_volumes(self.volumes)


def _die_with_parent() -> None:
    """In the child, before SAMSEG starts: on Linux, ask for SIGKILL when the parent dies (``PR_SET_PDEATHSIG``),
    so a SIGKILLed measuring worker leaves no SAMSEG running on behind it; elsewhere nothing."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def run_samseg(
    image: bytes,
    executable: str,
    threads: int = 1,
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = 1.0,
) -> SamsegResult:
    """Segment one ``.nii.gz`` image with ``run_samseg`` in a scratch folder (removed after).

    ``should_stop`` is polled every ``poll_s`` seconds; once it answers true, SAMSEG's process group is killed
    and :class:`SamsegStopped` raised.

    Raises:
        SegmentationError: SAMSEG exited with an error, or its outputs are missing or unreadable.
        SamsegStopped: stopped by ``should_stop``.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="brainsynth-samseg-") as scratch:
        folder = Path(scratch)
        (folder / "T1w.nii.gz").write_bytes(image)
        command = [executable, "-i", str(folder / "T1w.nii.gz"), "-o", str(folder / "out"), "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
        with open(folder / "samseg.log", "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                       preexec_fn=_die_with_parent)  # fmt: skip
            while True:
                try:
                    code = process.wait(poll_s)
                    break
                except subprocess.TimeoutExpired:
                    if should_stop is not None and should_stop():
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        raise SamsegStopped("SAMSEG stopped: its cohort was canceled or deleted") from None
        tail = (folder / "samseg.log").read_text(errors="replace")[-2000:]
        if code != 0:
            raise SegmentationError(f"run_samseg exited with code {code}: {tail}")
        out = folder / "out"
        try:
            volumes = read_samseg_stats((out / "samseg.stats").read_text())
            dseg = dseg_nifti(nib.load(out / "seg.mgz"), nib.Nifti1Image.from_bytes(gzip.decompress(image)))
        except OSError as err:
            raise SegmentationError(f"SAMSEG's outputs are missing ({err}): {tail}") from err
    return SamsegResult(volumes, dseg, time.perf_counter() - started)


def samseg_subject_files(pid: str, result: SamsegResult) -> dict[str, bytes]:
    """A subject's derivative files: its label map and its volumes table."""
    return {dseg_path(pid): result.dseg, volumes_path(pid): volumes_tsv(result.volumes).encode()}


#: SAMSEG's default atlas inside its package (the labels its ``seg.mgz`` uses).
SAMSEG_ATLAS = "atlas/20Subjects_smoothing2_down2_smoothingForAffine2"
#: Asks a Python for its SAMSEG: version and package folder (JSON), or null.
_FIND_SAMSEG = (
    "import json, pathlib, importlib.metadata as m, importlib.util as u\n"
    "s = u.find_spec('samseg')\n"
    "print(json.dumps(s and [m.version('samseg'), str(pathlib.Path(s.origin).parent)]))"
)


@dataclass(frozen=True)
class Samseg:
    """SAMSEG as a measure: its ``run_samseg``, version and atlas labels, and the threads one run gets."""

    executable: str
    version: str
    labels: tuple[Label, ...]
    threads: int = 1

    @classmethod
    def in_environment(cls, python: str | Path, threads: int = 1, executable: str | None = None) -> Samseg:
        """The SAMSEG installed beside ``python`` (the measuring environment's; a worker passes its own):
        ``run_samseg`` from the same ``bin/`` unless ``executable`` is given.

        Raises:
            SegmentationError: that environment has no SAMSEG (``make install`` builds .venv-measure).
        """
        try:
            found = subprocess.run([str(python), "-c", _FIND_SAMSEG], capture_output=True, text=True, timeout=60,
                                   check=True)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as err:
            raise SegmentationError(f"cannot ask {python} for SAMSEG: {err}") from err
        answer = json.loads(found.stdout or "null")
        if answer is None:
            raise SegmentationError(
                f"SAMSEG is not installed beside {python}: `make install` builds its environment (.venv-measure)"
            )
        version, package = answer
        table = Path(package) / SAMSEG_ATLAS / "compressionLookupTable.txt"
        command = executable or str(Path(python).parent / "run_samseg")
        return cls(command, version, tuple(read_lookup_table(table.read_text())), threads)

    def segment(
        self, pid: str, image: bytes, tolerance: float, should_stop: Callable[[], bool] | None = None
    ) -> tuple[SamsegResult, Measurement, dict[str, bytes]]:
        """Segment a subject's ``.nii.gz`` image: SAMSEG's result, the subject's measurement, and its derivative
        files (label map, volumes table). Raises as :func:`run_samseg`."""
        result = run_samseg(image, self.executable, self.threads, should_stop)
        return result, result.measured().measurement(tolerance), samseg_subject_files(pid, result)

    def dataset_files(self) -> dict[str, bytes]:
        """The derivative dataset's own files (:func:`samseg_dataset_files`)."""
        return samseg_dataset_files(self.version, list(self.labels))
