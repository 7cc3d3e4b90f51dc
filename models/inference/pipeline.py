"""The sampling pipeline: validated conditioning -> seeded latent diffusion -> decoded volumes.

Follows the sampling procedure of Pinaya et al. 2022 and the MONAI bundle's ``scripts/sampler.py``
(DDIM, 50 steps, eta 0, latent decoded without rescaling for the ``ukb`` model), batched over subjects
with one generator per subject (see :mod:`models.inference.sampling` for the noise contract).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from models.catalogue.config import ModelConfig, read_model_config
from models.catalogue.networks import build_unet, load_autoencoder, load_weights
from models.cohort.conditioning import Covariates, normalise
from models.cohort.design import DEFAULT_STEPS, check_sampler
from models.errors import GenerationStopped, SamplingError, WeightsError
from models.inference.execution import Execution, Precision
from models.inference.sampling import build_scheduler, denoise, subject_generator
from models.inference.slab_decode import SlabDecoder

#: Reduced precisions for the UNet and decoder (autocast); ``None`` is float32.
PRECISIONS: dict[Precision, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: ``callback(done, total)``: work units done so far; one unit per subject per denoising step and one
#: per decoded subject.
ProgressCallback = Callable[[int, int], None]

#: ``should_stop()``: polled between denoising steps, between subjects and before every block of the UNet and
#: the decoder; when it answers true, sampling raises :class:`GenerationStopped`.
StopCheck = Callable[[], bool]


@contextmanager
def stop_points(modules: Sequence[torch.nn.Module], should_stop: StopCheck | None) -> Iterator[None]:
    """Check ``should_stop`` before each child block of ``modules`` runs, so a stop request ends a step
    within one block's time (a full-size step on a CPU takes seconds; one block a fraction of it)."""
    if should_stop is None:
        yield
        return

    def check(_module: torch.nn.Module, _inputs: object) -> None:
        if should_stop():
            raise GenerationStopped("sampling was stopped on request")

    handles = [
        block.register_forward_pre_hook(check)
        for module in modules
        for block in module.modules()
        if isinstance(block, torch.nn.Conv3d | torch.nn.Linear)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class SubjectSample:
    """One generated subject: the volume as decoded (not clamped) and how it was made."""

    volume: np.ndarray
    seed: int
    covariates: Covariates
    conditioning: tuple[float, float, float, float]
    #: Wall time of this subject: its share of its batch's denoising plus its own decode (seconds).
    seconds: float = 0.0
    #: Its decode alone (seconds).
    decode_seconds: float = 0.0
    #: The classifier-free guidance scale it was sampled with (1: none).
    guidance: float = 1.0


def resolve_device(device: str | None) -> torch.device:
    """``cpu``, ``cuda``/``cuda:N``, or ``None`` for CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise SamplingError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from err
    if resolved.type not in ("cpu", "cuda"):
        raise SamplingError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SamplingError("device 'cuda' was requested but PyTorch sees no CUDA GPU here; use --device cpu")
    return resolved


class BrainLDMPipeline:
    """A loaded model ready to sample: autoencoder + conditioned UNet + its configuration."""

    def __init__(
        self,
        config: ModelConfig,
        autoencoder: AutoencoderKL,
        unet: DiffusionModelUNet,
        device: torch.device | str = "cpu",
        execution: Execution | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        #: how the networks run (precision, memory format, compilation, slab decode); recorded in sidecars
        self.execution = execution or Execution()
        memory_format = torch.channels_last_3d if self.execution.channels_last else torch.contiguous_format
        self.autoencoder = autoencoder.to(self.device, memory_format=memory_format).eval()
        self.unet = unet.to(self.device, memory_format=memory_format).eval()
        self._memory_format = memory_format
        if self.execution.compile and self.device.type == "cpu" and shutil.which("g++") is None:
            raise SamplingError("--compile (BRAINSYNTH_COMPILE) on a CPU needs a C++ compiler (g++, for "
                                "torch.compile's CPU backend): install one or run without it")  # fmt: skip
        self._unet_call: torch.nn.Module = (
            torch.compile(self.unet, dynamic=False) if self.execution.compile else self.unet
        )
        self._slab_decoder: SlabDecoder | None = None
        self._decode_whole: Callable[[torch.Tensor], torch.Tensor] = self.autoencoder.decode_stage_2_outputs
        if self.execution.decode_slab is not None:
            self._slab_decoder = SlabDecoder(
                self.autoencoder, self.execution.decode_slab, self.execution.decode_offload
            )
        elif self.execution.compile:
            self._decode_whole = torch.compile(self.autoencoder.decode_stage_2_outputs, dynamic=False)

    @classmethod
    def from_dir(
        cls,
        model_dir: Path | str,
        device: str | None = "cpu",
        execution: Execution | None = None,
    ) -> BrainLDMPipeline:
        """Load a model directory, checking each weight file's sha256 against ``model.json`` first."""
        model_dir = Path(model_dir)
        config = read_model_config(model_dir)
        if config.weights is None:
            raise WeightsError(f"{model_dir}/model.json lists no weights: the model has not been trained or imported")
        if config.weights.unet is None:
            raise WeightsError(
                f"{model_dir} has an autoencoder but no diffusion model yet: run `brainsynth train diffusion`"
            )
        torch_device = resolve_device(device)
        autoencoder = load_autoencoder(model_dir, config)
        unet = load_weights(build_unet(config), model_dir, config.weights.unet, "unet")
        return cls(config, autoencoder, unet, torch_device, execution)

    def __call__(self, covariates: Sequence[Covariates], seeds: Sequence[int], **options: Any) -> list[SubjectSample]:
        """Sample one volume per subject: :meth:`generate`'s samples as a list (same keyword options)."""
        return list(self.generate(covariates, seeds, **options))

    def generate(
        self,
        covariates: Sequence[Covariates],
        seeds: Sequence[int],
        *,
        sampler: str = "ddim",
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        guidance: float | None = None,
        batch_size: int = 1,
        extrapolate: bool = False,
        callback: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Iterator[SubjectSample]:
        """Sample one volume per subject, yielding each as soon as it is decoded (in input order), so a
        caller can write one subject while the next is decoded. Arguments are checked before it returns.

        Args:
            covariates: per-subject conditioning in physical units.
            seeds: per-subject seeds (the same seed and conditioning give the same volume).
            sampler: ``ddim``, ``ddpm``, ``pndm`` or ``dpmpp2m``.
            num_inference_steps: denoising steps; default ``models.cohort.design.DEFAULT_STEPS[sampler]``.
            eta: DDIM stochasticity (0 = deterministic, the bundle's setting).
            guidance: classifier-free guidance scale; default the model's (:meth:`ModelConfig.guidance_scale`:
                1 for a model trained without condition dropout, which refuses any other).
            batch_size: subjects per UNet call; does not change the result.
            extrapolate: allow covariates beyond the training range (bounded, see ``models.cohort.conditioning``).
            callback: progress as ``callback(done, total)``.
            should_stop: polled between steps, subjects and network blocks; true raises
                :class:`~models.errors.GenerationStopped` (subjects already yielded stay yielded).
        """
        steps = num_inference_steps if num_inference_steps is not None else DEFAULT_STEPS.get(sampler, 50)
        scheduler = self.config.scheduler
        check_sampler(sampler, steps, scheduler.num_train_timesteps, scheduler.prediction_type)
        if len(covariates) != len(seeds):
            raise SamplingError(f"{len(covariates)} subjects but {len(seeds)} seeds")
        if batch_size < 1:
            raise SamplingError(f"batch size must be at least 1, got {batch_size}")
        if eta < 0 or (eta > 0 and sampler != "ddim"):
            raise SamplingError(f"eta must be >= 0 and is only used by ddim, got {eta} for {sampler}")
        scale = self.config.guidance_scale(guidance)
        vectors = [normalise(c, self.config.conditioning, extrapolate=extrapolate) for c in covariates]
        generators = [subject_generator(s) for s in seeds]
        return self._generate(
            covariates, seeds, vectors, generators, sampler, steps, eta, scale, batch_size, callback, should_stop
        )

    def _generate(
        self,
        covariates: Sequence[Covariates],
        seeds: Sequence[int],
        vectors: list[tuple[float, float, float, float]],
        generators: list[torch.Generator],
        sampler: str,
        steps: int,
        eta: float,
        guidance: float,
        batch_size: int,
        callback: ProgressCallback | None,
        should_stop: StopCheck | None,
    ) -> Iterator[SubjectSample]:
        total = len(seeds) * (steps + 1)
        done = 0

        def check_stop() -> None:
            if should_stop is not None and should_stop():
                raise GenerationStopped("sampling was stopped on request")

        for start in range(0, len(seeds), batch_size):
            check_stop()
            stop = min(start + batch_size, len(seeds))
            width = stop - start

            def on_step(_step: int, _total: int, width: int = width) -> None:
                nonlocal done
                done += width
                if callback is not None:
                    callback(done, total)
                check_stop()

            # compiled graphs would recompile around hooks: with --compile a stop waits for the step's end
            hooked = [] if self.execution.compile else [self.unet, self.autoencoder]
            denoise_started = time.perf_counter()
            with torch.inference_mode(), self._autocast(), stop_points(hooked, should_stop):
                conditioning = torch.tensor(vectors[start:stop], dtype=torch.float32, device=self.device)
                latents = denoise(
                    self._unet_call,
                    build_scheduler(self.config.scheduler, sampler, steps),
                    sampler,
                    conditioning,
                    generators[start:stop],
                    self.config.latent_shape,
                    eta=eta,
                    guidance=guidance,
                    null_condition=self.config.guidance.null_condition if self.config.guidance else None,
                    callback=on_step,
                )
            denoise_share = (time.perf_counter() - denoise_started) / width
            for offset in range(width):
                check_stop()
                decode_started = time.perf_counter()
                with stop_points(hooked, should_stop):
                    volume = self.decode(latents[offset : offset + 1], should_stop)
                decoded = time.perf_counter() - decode_started
                index = start + offset
                done += 1
                if callback is not None:
                    callback(done, total)
                yield SubjectSample(volume, int(seeds[index]), covariates[index], vectors[index],
                                    denoise_share + decoded, decoded, guidance)  # fmt: skip

    def _autocast(self) -> torch.autocast | nullcontext:
        if self.execution.precision is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.execution.precision])

    def decode(self, latent: torch.Tensor, should_stop: StopCheck | None = None) -> np.ndarray:
        """Decode one latent (1, C, X, Y, Z) to a float32 volume (X, Y, Z); latents are divided by the scale factor.

        With ``execution.decode_slab`` the decoder runs slab by slab
        (:class:`models.inference.slab_decode.SlabDecoder`): the same volume within float rounding, in less memory."""
        scaled = (latent.float() / self.config.scale_factor).contiguous(memory_format=self._memory_format)
        with torch.inference_mode(), self._autocast():
            if self._slab_decoder is not None:
                image = self._slab_decoder(scaled, should_stop)
            else:
                image = self._decode_whole(scaled)
        return image[0, 0].float().cpu().numpy()
