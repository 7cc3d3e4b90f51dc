"""The model directory format: ``model.json`` validated by frozen pydantic models.

A model lives in a directory holding ``model.json`` (this schema), ``autoencoder.pt`` (the
``monai.networks.nets.AutoencoderKL`` state dict) and ``model.pt`` (the ``DiffusionModelUNet`` state dict).
Network kwargs mirror the MONAI bundle's ``autoencoder_def`` / ``diffusion_def`` keys exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.cohort.conditioning import ConditioningRanges
from models.cohort.design import MAX_GUIDANCE, PredictionType
from models.errors import ModelConfigError, SamplingError

MODEL_JSON = "model.json"
AUTOENCODER_FILE = "autoencoder.pt"
UNET_FILE = "model.pt"
#: The volume probe a model directory may ship (:mod:`models.evaluation.volumes`): its record and its weights.
PROBE_JSON, PROBE_WEIGHTS = "volume_probe.json", "volume_probe.pt"
FORMAT_VERSION = 1


class SchedulerConfig(BaseModel):
    """The training noise schedule (MONAI ``Scheduler`` kwargs) and parameterisation."""

    model_config = ConfigDict(frozen=True)

    num_train_timesteps: int = Field(1000, ge=1)
    schedule: str = "scaled_linear_beta"
    beta_start: float = Field(0.0015, gt=0)
    beta_end: float = Field(0.0205, gt=0)
    prediction_type: PredictionType = "epsilon"
    clip_sample: bool = False


class WeightFile(BaseModel):
    """A state-dict file of the model directory and what is known of its origin."""

    model_config = ConfigDict(frozen=True)

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    verified: bool
    source: str = Field("", description="where the weights came from, e.g. the bundle file and its md5")


class Weights(BaseModel):
    """The weight files of a model directory; ``unet`` is absent between the two training stages."""

    model_config = ConfigDict(frozen=True)

    autoencoder: WeightFile
    unet: WeightFile | None = None


#: A sha256 hex digest.
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class TrainingProvenance(BaseModel):
    """What one training run of ``brainsynth train`` learned from (recorded in ``model.json``)."""

    model_config = ConfigDict(frozen=True)

    stage: Literal["autoencoder", "diffusion"]
    data: str | tuple[str, ...] = Field(description="the training folder, as given (several: each, in order)")
    subjects: int = Field(ge=1, description="subjects over all its folders")
    participants_sha256: Sha256 | tuple[Sha256, ...] = Field(
        description="sha256 of its participants.tsv (several folders: of each, in the order of data)"
    )
    steps: int = Field(ge=1)
    init_from: str | None = Field(None, description="model whose UNet the run started from (fine-tuning)")

    @model_validator(mode="after")
    def _one_hash_per_folder(self) -> TrainingProvenance:
        if isinstance(self.data, str) != isinstance(self.participants_sha256, str) or (
            not isinstance(self.data, str) and len(self.data) != len(self.participants_sha256)
        ):
            raise ValueError("participants_sha256 needs one hash per training folder in data")
        return self


#: The null condition of classifier-free guidance: the normalised conditioning vector that stands for "no
#: condition" in training (condition dropout) and sampling (the unconditional branch). -1 on every entry lies
#: outside every value a request can reach, extrapolation included (``EXTRAPOLATION_BOUNDS``, -0.5 to 1.9).
NULL_CONDITION: tuple[float, float, float, float] = (-1.0, -1.0, -1.0, -1.0)


class GuidanceConfig(BaseModel):
    """A model trained for classifier-free guidance (Ho & Salimans 2022): with probability
    ``condition_dropout`` a training sample's conditioning (channels and cross-attention context alike) was
    replaced by ``null_condition``, so the UNet also predicts the unconditional noise, and sampling can use
    eps = eps_null + w (eps_cond - eps_null). ``default_scale`` is the w a request gets when it names none."""

    model_config = ConfigDict(frozen=True)

    condition_dropout: float = Field(gt=0, lt=1)
    null_condition: tuple[float, float, float, float] = NULL_CONDITION
    default_scale: float = Field(1.0, ge=0, le=MAX_GUIDANCE)


class ModelConfig(BaseModel):
    """Everything needed to rebuild, load and sample a latent diffusion model."""

    model_config = ConfigDict(frozen=True)

    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str
    description: str
    intended_use: str
    autoencoder: dict[str, Any]
    diffusion: dict[str, Any]
    scheduler: SchedulerConfig
    scale_factor: float = Field(gt=0)
    conditioning: ConditioningRanges
    image_shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    affine: tuple[tuple[float, float, float, float], ...] = Field(min_length=4, max_length=4)
    weights: Weights | None = None
    #: training runs in order (models made here by ``brainsynth train``; empty for imported ones)
    training: tuple[TrainingProvenance, ...] = ()
    #: classifier-free guidance support; ``None`` for a model trained without condition dropout (it samples
    #: at guidance 1 only)
    guidance: GuidanceConfig | None = None

    def guidance_scale(self, requested: float | None) -> float:
        """The guidance scale to sample with: ``requested``, else the model's default (1: plain conditional).

        Raises:
            SamplingError: a scale other than 1 for a model without guidance support, or out of range.
        """
        scale = requested if requested is not None else (self.guidance.default_scale if self.guidance else 1.0)
        if not 0 <= scale <= MAX_GUIDANCE:
            raise SamplingError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {scale}", field="guidance")
        if scale != 1 and self.guidance is None:
            raise SamplingError(
                f"model {self.name!r} was not trained for classifier-free guidance (no condition dropout): "
                "guidance must be 1",
                field="guidance",
            )
        return float(scale)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        ae, unet = self.autoencoder, self.diffusion
        levels = len(ae["channels"]) - 1
        factor = 2**levels
        if any(s % factor for s in self.image_shape):
            raise ValueError(f"image_shape {self.image_shape} must be divisible by the autoencoder factor {factor}")
        unet_factor = 2 ** (len(unet["channels"]) - 1)
        if any((s // factor) % unet_factor for s in self.image_shape):
            raise ValueError(f"latent shape {self.latent_shape} must be divisible by the UNet factor {unet_factor}")
        if unet["in_channels"] != ae["latent_channels"] + 4:
            raise ValueError("diffusion in_channels must be latent_channels + 4 (hybrid conditioning)")
        if unet["out_channels"] != ae["latent_channels"]:
            raise ValueError("diffusion out_channels must equal the autoencoder's latent_channels")
        if not unet.get("with_conditioning") or unet.get("cross_attention_dim") != 4:
            raise ValueError("diffusion must use cross-attention conditioning with cross_attention_dim 4")
        if len(self.affine) != 4 or any(len(row) != 4 for row in self.affine):
            raise ValueError("affine must be a 4x4 matrix")
        return self

    @property
    def is_complete(self) -> bool:
        """Both networks have weights, so the model can sample."""
        return self.weights is not None and self.weights.unet is not None

    @property
    def weights_verified(self) -> bool:
        """Both weight files match published hashes (imported bundle) or were produced here (training)."""
        w = self.weights
        return w is not None and w.unet is not None and w.autoencoder.verified and w.unet.verified

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.autoencoder["channels"]) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(channels, x, y, z) of the diffusion model's latent."""
        f = self.downsampling_factor
        x, y, z = self.image_shape
        return (int(self.autoencoder["latent_channels"]), x // f, y // f, z // f)


def _check_network_kwargs(autoencoder: dict[str, Any], diffusion: dict[str, Any]) -> None:
    """Let MONAI validate the kwargs by building both networks on the ``meta`` device (no memory used)."""
    import torch
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    for label, cls, kwargs in (
        ("autoencoder", AutoencoderKL, autoencoder),
        ("diffusion", DiffusionModelUNet, diffusion),
    ):
        try:
            with torch.device("meta"):
                cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{label} network kwargs are invalid: {err}") from err


def read_model_config(model_dir: Path, *, check_networks: bool = True) -> ModelConfig:
    """Read and validate ``model_dir/model.json``; with ``check_networks`` MONAI also validates the network
    kwargs (imports torch; the API server reads model directories without it).

    Raises:
        ModelConfigError: the file is missing or invalid; the message says which and why.
    """
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise ModelConfigError(f"{path} not found: a model directory needs a {MODEL_JSON}")
    try:
        config = ModelConfig.model_validate(json.loads(path.read_text()))
        if check_networks:
            _check_network_kwargs(config.autoencoder, config.diffusion)
    except (json.JSONDecodeError, ValidationError, ValueError) as err:
        raise ModelConfigError(f"{path} is not a valid model description: {err}") from err
    return config


def write_model_config(model_dir: Path, config: ModelConfig) -> Path:
    """Write ``model.json`` (pretty-printed, stable key order)."""
    path = Path(model_dir) / MODEL_JSON
    path.write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    return path
