"""The BIDS layout of a synthetic cohort (BIDS 1.10; https://bids-specification.readthedocs.io).

::

    dataset_description.json
    participants.tsv, participants.json
    sub-000001/anat/sub-000001_T1w.nii.gz
    sub-000001/anat/sub-000001_T1w.json

The same functions produce the files on disk (``brainsynth sample``) and in object storage (the service),
so both layouts are identical.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from models.catalogue.config import ModelConfig
from models.catalogue.presets import RESEARCH_USE
from models.cohort.conditioning import Covariates
from models.cohort.design import is_participant_label
from models.cohort.nifti import OutputDType
from models.errors import OutputExistsError
from models.inference.execution import Execution

BIDS_VERSION = "1.10.0"

PARTICIPANT_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "age",
    "sex",
    "ventricular_volume_mm3",
    "brain_volume_mm3",
    "sex_normalised",
    "age_normalised",
    "ventricular_volume_normalised",
    "brain_volume_normalised",
    "seed",
    "sampler",
    "steps",
    "guidance",
    "measured_ventricular_volume_mm3",
    "measured_brain_volume_mm3",
    "measure",
    "qc",
    "attempt",
)


@functools.cache
def package_version(package: str = "brainsynth") -> str:
    """The installed version of ``package`` (BrainSynth by default), read without importing it; read once a
    process (parsing package metadata cost a worker 5 ms a subject, a third of its 4 mm write time)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _subject_folder(pid: str) -> str:
    """``pid`` checked as a BIDS label: a file is never named by a path (``../x``) or a non-label."""
    if not is_participant_label(pid):
        raise ValueError(f"participant_id {pid!r} is not a BIDS label (sub- then letters and digits)")
    return pid


def t1w_path(pid: str) -> str:
    """Relative path of a subject's T1w image."""
    return f"{_subject_folder(pid)}/anat/{pid}_T1w.nii.gz"


def sidecar_path(pid: str) -> str:
    """Relative path of a subject's T1w JSON sidecar."""
    return f"{_subject_folder(pid)}/anat/{pid}_T1w.json"


#: What a subject's ``qc`` column says: both measured volumes within the tolerance of the requested ones, one
#: of them outside it, or no measurement (``qc: none``, or a model without a volume probe).
QC_PASS, QC_OUTSIDE, QC_NOT_MEASURED = "pass", "outside tolerance", "not measured"
#: Relative difference between measured and requested volume that still passes, per volume (opt out: ``qc: none``).
DEFAULT_QC_TOLERANCE = 0.25


@dataclass(frozen=True)
class Measurement:
    """Volumes measured back on a generated image, in mm3, and the measure that took them (``probe``: the
    model's volume probe, :mod:`models.evaluation.volumes`)."""

    ventricular_volume_mm3: float
    brain_volume_mm3: float
    measure: str
    tolerance: float = DEFAULT_QC_TOLERANCE

    def error(self, requested: Covariates) -> float:
        """The larger of the two volumes' relative differences from the request."""
        pairs = ((self.ventricular_volume_mm3, requested.ventricular_volume_mm3),
                 (self.brain_volume_mm3, requested.brain_volume_mm3))  # fmt: skip
        return max(abs(measured - wanted) / abs(wanted) for measured, wanted in pairs)

    def qc(self, requested: Covariates) -> str:
        """``pass`` when both volumes are within the relative tolerance of the request, else ``outside
        tolerance``."""
        return QC_PASS if self.error(requested) <= self.tolerance else QC_OUTSIDE


@dataclass(frozen=True)
class SubjectRecord:
    """What participants.tsv and a sidecar say of one subject."""

    participant_id: str
    covariates: Covariates
    conditioning: tuple[float, float, float, float]
    seed: int
    #: how it was sampled (``None``, written ``n/a``, for images that were not: phantoms)
    sampler: str | None = None
    steps: int | None = None
    #: the volumes measured back on the image, if any
    measurement: Measurement | None = None
    #: which attempt made the image (k > 1: regenerated after a measurement outside tolerance; ``seed`` is
    #: that attempt's, :func:`models.cohort.design.attempt_seed`)
    attempt: int = 1
    #: the classifier-free guidance scale it was sampled with (``None``, ``n/a``, for images that were not)
    guidance: float | None = None

    @property
    def qc(self) -> str:
        return QC_NOT_MEASURED if self.measurement is None else self.measurement.qc(self.covariates)


@dataclass(frozen=True)
class SamplerSettings:
    name: str
    steps: int
    eta: float
    batch_size: int
    dtype: OutputDType
    #: how the networks ran (precision, memory format, compilation, slab decode)
    execution: Execution = field(default_factory=Execution)


def model_hash(config: ModelConfig) -> str:
    """The model's identity for provenance: sha256 of its UNet weights (``unverified:`` if not checked)."""
    if config.weights is None or config.weights.unet is None:
        return "none"
    prefix = "" if config.weights_verified else "unverified:"
    return prefix + config.weights.unet.sha256


#: The dataset manifest: ``sha256  path`` of every other file, written last (it marks the dataset complete).
MANIFEST = "SHA256SUMS"
#: The dataset's name when the request gives none.
DEFAULT_COHORT_NAME = "BrainSynth synthetic cohort"
#: Who is named as the dataset's authors when the request names nobody (BIDS recommends Authors).
DEFAULT_AUTHORS = ("BrainSynth (synthetic data generator)",)


def dataset_description(config: ModelConfig, cohort_name: str, authors: Sequence[str] | None = None) -> dict[str, Any]:
    """``dataset_description.json``: raw dataset, generated by BrainSynth with the model's identity."""
    weights = config.weights
    return {
        "Name": cohort_name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "Authors": list(authors or DEFAULT_AUTHORS),
        "License": "synthetic data; research use only",
        "HowToAcknowledge": "Pinaya et al. 2022, Brain Imaging Generation with Latent Diffusion Models, "
        "arXiv:2209.07162",
        "GeneratedBy": [
            {
                "Name": "BrainSynth",
                "Version": package_version(),
                "Description": f"Latent diffusion model {config.name} {config.version}: {config.description}. "
                + RESEARCH_USE,
                "ModelName": config.name,
                "ModelVersion": config.version,
                "ModelSHA256": {
                    "autoencoder": weights.autoencoder.sha256 if weights else None,
                    "unet": weights.unet.sha256 if weights and weights.unet else None,
                },
                "WeightsVerified": config.weights_verified,
            }
        ],
    }


def dataset_readme(config: ModelConfig, cohort_name: str) -> str:
    """The dataset's ``README``: what the data are and what they are not."""
    return (
        f"# {cohort_name}\n\n"
        f"Synthetic T1-weighted brain MRI generated by BrainSynth {package_version()} with the latent diffusion "
        f"model {config.name} {config.version} ({config.description}).\n\n"
        "These images are not scans of people. They are synthetic data for research use only and must not be "
        "used clinically. participants.tsv lists the conditioning each image was generated from and its seed; "
        "each T1w sidecar records the sampler, the model's weight hash and the software versions.\n\n"
        "Method: Pinaya et al. 2022, Brain Imaging Generation with Latent Diffusion Models, arXiv:2209.07162.\n"
    )


def require_empty_folder(path: Path, option: str | None = None) -> Path:
    """``path`` if it is missing or an empty folder (every writer of datasets checks this, and only this way).

    Raises:
        OutputExistsError: it holds something; the message names ``option`` and what to do.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        named = f"{option} {path}" if option else str(path)
        raise OutputExistsError(f"{named} exists and is not an empty folder: choose a new one")
    return path


#: The comparison of a cohort drawn ``like`` a reference table with it (:func:`models.cohort.like.like_report`).
LIKE_REPORT = "like_report.json"
#: Requested against measured volumes of a measured cohort (:mod:`models.dataset.qc`).
QC_REPORT, QC_SCATTER = "qc_report.json", "qc_scatter.png"


def dataset_files(
    config: ModelConfig,
    cohort_name: str,
    records: list[SubjectRecord],
    authors: Sequence[str] | None = None,
    like_report: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Every dataset-level file of a cohort but the manifest (relative path -> text), the same for a local
    ``brainsynth sample`` and the service's archive; write them after the subjects, then :func:`manifest`.
    A cohort drawn like a reference table also gets :data:`LIKE_REPORT`; a measured one's QC report and scatter
    plot (:mod:`models.dataset.qc`) are named in .bidsignore here (outside BIDS, like the manifest)."""
    ignored = [MANIFEST]
    if like_report is not None:
        ignored.append(LIKE_REPORT)
    if any(record.measurement is not None for record in records):
        ignored += [QC_REPORT, QC_SCATTER]
    files = {
        "dataset_description.json": dumps(dataset_description(config, cohort_name, authors)),
        "README": dataset_readme(config, cohort_name),
        "participants.json": dumps(participants_json(config)),
        "participants.tsv": participants_tsv(records),
        ".bidsignore": "".join(name + "\n" for name in ignored),
    }
    if like_report is not None:
        files[LIKE_REPORT] = dumps(like_report)
    return files


def manifest(digests: Iterable[tuple[str, str]]) -> str:
    """``SHA256SUMS`` text from (relative path, sha256 hex) pairs, sorted by path (``sha256sum -c`` format)."""
    return "".join(f"{digest}  {relative}\n" for relative, digest in sorted(digests) if relative != MANIFEST)


def participants_json(config: ModelConfig) -> dict[str, Any]:
    """``participants.json``: units and meaning of every participants.tsv column."""
    ranges = config.conditioning

    def described(field: str) -> dict[str, Any]:
        spec = ranges.covariate(field)
        return {
            "Description": f"requested {spec.description} (training range {spec.min:g}-{spec.max:g})",
            "Units": spec.unit,
        }

    def normalised(what: str) -> dict[str, str]:
        return {"Description": f"{what} as given to the model (min-max normalised with the training range)"}

    return {
        "participant_id": {"Description": "synthetic subject label"},
        "age": described("age"),
        "sex": {"Description": "requested sex", "Levels": {"F": "female", "M": "male"}},
        "ventricular_volume_mm3": described("ventricular_volume_mm3"),
        "brain_volume_mm3": described("brain_volume_mm3"),
        "sex_normalised": normalised("sex (F = 0, M = 1)"),
        "age_normalised": normalised("age"),
        "ventricular_volume_normalised": normalised("ventricular volume"),
        "brain_volume_normalised": normalised("brain volume"),
        "seed": {
            "Description": "per-subject seed; with the same model, sampler, steps and conditioning it "
            "regenerates this subject (brainsynth sample --subjects)"
        },
        "sampler": {"Description": "the sampler that made the subject (ddim, ddpm, pndm or dpmpp2m)"},
        "steps": {"Description": "its number of denoising steps"},
        "guidance": {
            "Description": "its classifier-free guidance scale w (Ho & Salimans 2022): eps = eps_null + w (eps_cond - "
            "eps_null); 1 = the conditional model alone (every model without condition dropout)",
        },
        "measured_ventricular_volume_mm3": {
            "Description": "ventricular CSF volume measured back on the generated image by the measure column's "
            "measure (n/a: not measured)",
            "Units": "mm3",
        },
        "measured_brain_volume_mm3": {
            "Description": "head-size-normalised brain volume measured back on the generated image (n/a: not measured)",
            "Units": "mm3",
        },
        "measure": {
            "Description": "what measured the two volumes",
            "Levels": {
                "probe": "the model's volume probe, a CNN regressor trained on phantoms of known volume "
                "(volume_probe.json in the model directory records its held-out accuracy)",
                "samseg": "FreeSurfer's SAMSEG (label maps and per-structure volumes in derivatives/samseg): "
                "ventricles = lateral ventricles, inferior horns, 3rd and 4th ventricle; brain = grey + white matter "
                "times the MNI152 head's intracranial volume over SAMSEG's estimate of the subject's",
                "n/a": "not measured",
            },
        },
        "qc": {
            "Description": "measured against requested volumes, each within a relative tolerance (the sidecar's "
            f"Measured.tolerance; default {DEFAULT_QC_TOLERANCE:g})",
            "Levels": {
                QC_PASS: "both volumes within the tolerance",
                QC_OUTSIDE: "at least one volume outside it",
                QC_NOT_MEASURED: "no measurement (qc none, or no measure for this model)",
            },
        },
        "attempt": {
            "Description": "which attempt made the image: 1, or k > 1 when the cohort asked for max_attempts and "
            "the subject was generated again after measuring outside tolerance; seed is that attempt's seed (the "
            "first 8 bytes of sha256('brainsynth-attempt:{first seed}:{k}'), 63 bits), so the row regenerates the "
            "image as it is (a regenerated subject is sampled alone: batch size 1)",
        },
    }


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def participants_tsv(records: list[SubjectRecord]) -> str:
    """``participants.tsv`` text, one row per subject in participant order."""
    lines = ["\t".join(PARTICIPANT_COLUMNS)]
    for record in sorted(records, key=lambda r: r.participant_id):
        c = record.covariates
        row = (
            record.participant_id,
            c.age,
            c.sex,
            c.ventricular_volume_mm3,
            c.brain_volume_mm3,
            *record.conditioning,
            record.seed,
            "n/a" if record.sampler is None else record.sampler,
            "n/a" if record.steps is None else record.steps,
            "n/a" if record.guidance is None else record.guidance,
            *(
                ("n/a", "n/a", "n/a")
                if (m := record.measurement) is None
                else (m.ventricular_volume_mm3, m.brain_volume_mm3, m.measure)
            ),
            record.qc,
            record.attempt,
        )
        lines.append("\t".join(_format(v) for v in row))
    return "\n".join(lines) + "\n"


def t1w_sidecar(config: ModelConfig, record: SubjectRecord, sampler: SamplerSettings, device: str) -> dict[str, Any]:
    """A subject's T1w sidecar: seed, conditioning, sampler, model identity, software versions, usage."""
    c = record.covariates
    return {
        "SyntheticData": True,
        "Usage": RESEARCH_USE,
        "Seed": record.seed,
        "Conditioning": {
            "age": c.age,
            "sex": c.sex,
            "ventricular_volume_mm3": c.ventricular_volume_mm3,
            "brain_volume_mm3": c.brain_volume_mm3,
            "normalised": {
                "order": ["sex", "age", "ventricular_volume", "brain_volume"],
                "values": list(record.conditioning),
            },
        },
        "Sampler": sampler.name,
        "NumInferenceSteps": sampler.steps,
        "Eta": sampler.eta,
        "GuidanceScale": record.guidance,
        # Bytes are reproducible at the same batch size; across batch sizes values agree within 1e-5.
        "BatchSize": sampler.batch_size,
        **sampler.execution.sidecar(),
        "ModelName": config.name,
        "ModelVersion": config.version,
        "ModelSHA256": model_hash(config),
        "DataType": sampler.dtype,
        "IntensityRange": [0, 255] if sampler.dtype == "uint8" else [0.0, 1.0],
        "VoxelSizeMM": list(config.voxel_size_mm),
        "SoftwareVersion": package_version(),
        "TorchVersion": package_version("torch"),
        "MONAIVersion": package_version("monai"),
        "Device": device,
        "Platform": platform.platform(),
        **_measured(record),
        "Attempt": record.attempt,
    }


def _measured(record: SubjectRecord) -> dict[str, Any]:
    m = record.measurement
    if m is None:
        return {"QC": record.qc}
    measured = {"ventricular_volume_mm3": m.ventricular_volume_mm3, "brain_volume_mm3": m.brain_volume_mm3,
                "measure": m.measure, "tolerance": m.tolerance}  # fmt: skip
    return {"Measured": measured, "QC": record.qc}


def record_from_sidecar(participant: str, sidecar: dict[str, Any]) -> SubjectRecord:
    """The :class:`SubjectRecord` a T1w sidecar was written from (the inverse of :func:`t1w_sidecar`)."""
    c = sidecar["Conditioning"]
    covariates = Covariates(c["sex"], c["age"], c["ventricular_volume_mm3"], c["brain_volume_mm3"])
    values = tuple(float(v) for v in c["normalised"]["values"])
    m = sidecar.get("Measured")
    measurement = None if m is None else Measurement(
        float(m["ventricular_volume_mm3"]), float(m["brain_volume_mm3"]), str(m["measure"]), float(m["tolerance"])
    )  # fmt: skip
    return SubjectRecord(
        participant, covariates, values, int(sidecar["Seed"]), sidecar["Sampler"], int(sidecar["NumInferenceSteps"]),
        measurement, int(sidecar.get("Attempt", 1)), None if (w := sidecar.get("GuidanceScale")) is None else float(w),
    )  # type: ignore[arg-type]  # fmt: skip


#: The sidecar fields :func:`record_from_sidecar` reads: what participants.tsv is made from.
SIDECAR_ESSENTIALS = ("Conditioning", "Seed", "Sampler", "NumInferenceSteps", "Measured", "Attempt", "GuidanceScale")


def sidecar_essentials(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The part of a T1w sidecar that participants.tsv needs (:func:`record_from_sidecar` reads it back)."""
    return {key: sidecar[key] for key in SIDECAR_ESSENTIALS if key in sidecar}


def measured_sidecar(participant: str, sidecar: dict[str, Any], measurement: Measurement) -> dict[str, Any]:
    """A stored T1w sidecar with ``measurement`` and its QC flag (a measuring worker's SAMSEG volumes)."""
    record = replace(record_from_sidecar(participant, sidecar), measurement=measurement)
    return {**sidecar, **_measured(record)}


def dumps(document: dict[str, Any]) -> str:
    """JSON text as written to every BIDS JSON file."""
    return json.dumps(document, indent=2) + "\n"
