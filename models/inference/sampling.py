"""Seeded latent sampling with the hybrid conditioning of Pinaya et al. 2022.

Noise contract (recorded per subject in its sidecar as ``Seed``):

- a subject's seed derives from the cohort seed and its index by :func:`models.cohort.design.subject_seed`;
- its initial latent is ``torch.randn((1, *latent_shape), generator=torch.Generator("cpu").manual_seed(seed),
  dtype=torch.float32)``, created on the CPU and moved to the device afterwards;
- any per-step noise (DDPM; DDIM with eta > 0) is drawn from the same CPU generator, in step order.

So a subject is the same whether it is sampled alone or in a batch, on any batch position.

Conditioning (paper section 2.2, "hybrid"): the normalised vector c = [sex, age, ventricles, brain] is
concatenated to the latent as 4 constant channels (latent first) and given to cross-attention as a context
of shape (B, 1, 4).

Classifier-free guidance (Ho & Salimans 2022), for models trained with condition dropout: at guidance scale
w != 1 each step runs the UNet once on a doubled batch, the subjects' conditions then the null condition
(:data:`models.catalogue.config.NULL_CONDITION`) for the same latents, and uses eps = eps_null + w (eps_cond -
eps_null). At w = 1 that is eps_cond, and the step runs exactly as without guidance (the same bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler, Scheduler

from models.catalogue.config import SchedulerConfig
from models.cohort.design import SEED_MASK, check_sampler
from models.errors import SamplingError
from models.inference.solvers import DPMSolverPP2M

#: ``callback(step, total)`` is called after each denoising step (1-based).
StepCallback = Callable[[int, int], None]


def subject_generator(seed: int) -> torch.Generator:
    """The CPU generator that drives all of one subject's randomness."""
    if not 0 <= int(seed) <= SEED_MASK:
        raise SamplingError(f"seed must be an integer in [0, 2**63 - 1], got {seed}")
    return torch.Generator("cpu").manual_seed(int(seed))


def initial_latent(generator: torch.Generator, latent_shape: Sequence[int]) -> torch.Tensor:
    """x_T of one subject, shape (1, C, X, Y, Z), float32 on the CPU (see the noise contract)."""
    return torch.randn((1, *latent_shape), generator=generator, dtype=torch.float32)


def build_scheduler(config: SchedulerConfig, sampler: str, num_inference_steps: int) -> Scheduler | DPMSolverPP2M:
    """A fresh MONAI scheduler (schedulers are stateful) with timesteps set.

    DDIM uses the bundle's "leading" timesteps ``(arange(K) * (T // K))[::-1]`` (980, 960, ..., 0 for
    K = 50): MONAI >= 1.6 spaces them by ``linspace`` (999, 979, 958, ...) while its ``step`` still assumes
    a stride of T // K, so its own schedule would not match the released model's sampling. eta is given
    at each step (0 = deterministic, as in the bundle). DDPM runs all T steps (MONAI's DDPM step assumes
    consecutive timesteps). PNDM runs as PLMS (``skip_prk_steps``), the usual few-step setting. ``dpmpp2m`` is
    DPM-Solver++(2M) (:mod:`models.inference.solvers`).
    """
    check_sampler(sampler, num_inference_steps, config.num_train_timesteps, config.prediction_type)
    total = config.num_train_timesteps
    common = {
        "num_train_timesteps": config.num_train_timesteps,
        "schedule": config.schedule,
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "prediction_type": config.prediction_type,
    }
    if sampler == "dpmpp2m":
        reference = DDIMScheduler(**common)  # the same betas; only its alphas_cumprod is used
        return DPMSolverPP2M(reference.alphas_cumprod, num_inference_steps, config.prediction_type)
    scheduler: Scheduler
    if sampler == "ddim":
        scheduler = DDIMScheduler(clip_sample=config.clip_sample, **common)
    elif sampler == "ddpm":
        scheduler = DDPMScheduler(clip_sample=config.clip_sample, **common)
    else:
        scheduler = PNDMScheduler(skip_prk_steps=True, **common)
    scheduler.set_timesteps(num_inference_steps)
    if sampler == "ddim":
        stride = total // num_inference_steps
        scheduler.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.long) * stride
    return scheduler


def _draws_noise(sampler: str, eta: float) -> bool:
    return sampler == "ddpm" or (sampler == "ddim" and eta > 0)


def denoise(
    unet: torch.nn.Module,
    scheduler: Scheduler | DPMSolverPP2M,
    sampler: str,
    conditioning: torch.Tensor,
    generators: Sequence[torch.Generator],
    latent_shape: Sequence[int],
    *,
    eta: float = 0.0,
    guidance: float = 1.0,
    null_condition: Sequence[float] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run the reverse diffusion for a batch and return the final latents (B, C, X, Y, Z).

    Args:
        unet: the conditioned ``DiffusionModelUNet``.
        scheduler: a fresh scheduler from :func:`build_scheduler`.
        sampler: its name (decides how per-step noise is drawn).
        conditioning: normalised conditioning, shape (B, 4), on the UNet's device.
        generators: one CPU generator per subject, fresh from :func:`subject_generator`.
        latent_shape: (C, X, Y, Z) of the latent.
        eta: DDIM eta (0 = deterministic).
        guidance: classifier-free guidance scale w (1 = the conditional prediction alone).
        null_condition: the model's null condition; required when ``guidance`` is not 1.
        callback: called as ``callback(step, total)`` after each step.
    """
    batch = conditioning.shape[0]
    if len(generators) != batch:
        raise SamplingError(f"{len(generators)} generators for {batch} subjects")
    guided = guidance != 1.0
    if guided and null_condition is None:
        raise SamplingError("guidance needs the model's null condition (a model trained with condition dropout)",
                            field="guidance")  # fmt: skip
    device = conditioning.device
    latents = torch.cat([initial_latent(g, latent_shape) for g in generators]).to(device)
    if guided:  # the subjects' conditions, then the null condition for each of them: one UNet call a step
        null = torch.tensor(null_condition, dtype=conditioning.dtype, device=device).expand_as(conditioning)
        conditioning = torch.cat((conditioning, null))
    width = conditioning.shape[0]
    context = conditioning[:, None, :]
    cond_channels = conditioning[:, :, None, None, None].expand(width, conditioning.shape[1], *latent_shape[1:])
    stochastic = _draws_noise(sampler, eta)
    step_kwargs = {"eta": eta} if sampler == "ddim" else {}
    timesteps = scheduler.timesteps
    total = len(timesteps)
    for index, t in enumerate(timesteps):
        t_batch = torch.full((width,), int(t), device=device, dtype=torch.long)
        inputs = torch.cat((latents, latents)) if guided else latents
        eps = unet(torch.cat((inputs, cond_channels), dim=1), timesteps=t_batch, context=context)
        if guided:
            eps_cond, eps_null = eps.chunk(2)
            eps = eps_null + guidance * (eps_cond - eps_null)
        if stochastic:
            # One step per subject so that each draws its noise from its own CPU generator.
            latents = torch.cat(
                [
                    scheduler.step(
                        eps[i : i + 1].cpu(),
                        int(t),
                        latents[i : i + 1].cpu(),
                        generator=generators[i],
                        **step_kwargs,
                    )[0]
                    for i in range(batch)
                ]
            ).to(device)
        else:
            latents, _ = scheduler.step(eps, int(t), latents, **step_kwargs)
        if callback is not None:
            callback(index + 1, total)
    return latents
