"""Stage 2: the conditioned latent diffusion UNet (Pinaya et al. 2022, section 2.2).

Latents are the trained autoencoder's posterior samples mu + sigma * eps, multiplied by the scale factor
1 / std(latents) measured on the training set (Rombach et al. 2022; presets with a fixed factor, like
``ukb``'s 1.0, keep it with ``fixed_scale_factor``). MSE against the model's parameterisation (model.json
``prediction_type``: the noise for epsilon, the velocity alpha eps - sigma x0 for v_prediction, the clean latent
for sample) at uniformly drawn timesteps,
with the paper's hybrid conditioning (4 constant channels after the latent + cross-attention context).
With ``condition_dropout`` p > 0, each sample's conditioning (channels and context alike) is replaced by the
null condition with probability p (classifier-free guidance, Ho & Salimans 2022), and model.json records p and
the null condition (``guidance``), so the model can be sampled with a guidance scale.
An exponential moving average of the weights (decay warming up as (1 + t) / (10 + t) to 0.999) is saved.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.networks.schedulers import DDPMScheduler

from models.catalogue.config import NULL_CONDITION, UNET_FILE, GuidanceConfig, read_model_config
from models.catalogue.networks import build_unet, load_autoencoder, load_weights
from models.training.checkpoint import LossLog, load_state, register_weights, save_state
from models.training.data import TrainingSet

ProgressCallback = Callable[[int, int, dict[str, float]], None]


def _target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict from the noised latents, by the scheduler's ``prediction_type``."""
    if scheduler.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if scheduler.prediction_type == "sample":
        return latents
    return noise


@dataclass(frozen=True)
class DiffusionSettings:
    steps: int = 4000
    batch_size: int = 16
    lr: float = 2.5e-4
    ema_decay: float = 0.999
    fixed_scale_factor: bool = False
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    #: a model directory whose UNet weights start the training (a fine-tune), when there is no checkpoint
    init_from: Path | None = None
    #: probability of training a sample on the null condition (0: no classifier-free guidance support)
    condition_dropout: float = 0.0
    #: the guidance scale model.json offers by default (``None``: keep the recorded one, else 1)
    default_guidance: float | None = None


def ema_decay(step: int, ceiling: float) -> float:
    """EMA decay at ``step`` with warm-up, ``min(ceiling, (1 + step) / (10 + step))``: without it an average
    started at the random initialisation keeps ``ceiling ** step`` of it (45 % after 800 steps at 0.999)."""
    return min(ceiling, (1.0 + step) / (10.0 + step))


def encode_training_set(data: TrainingSet, model_dir: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every training image under the model's trained autoencoder."""
    autoencoder = load_autoencoder(model_dir, read_model_config(model_dir)).to(device).eval()
    mus, sigmas = [], []
    with torch.inference_mode():
        for image in data.images.split(8):
            mu, sigma = autoencoder.encode(image.to(device))
            mus.append(mu.cpu())
            sigmas.append(sigma.cpu())
    return torch.cat(mus), torch.cat(sigmas)


def train_diffusion(
    data: TrainingSet,
    model_dir: Path,
    settings: DiffusionSettings,
    device: torch.device,
    callback: ProgressCallback | None = None,
) -> Path:
    """Train (or resume) the UNet of ``model_dir`` on latents of its trained autoencoder."""
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    if config.weights is None:
        from models.training.data import TrainingDataError

        raise TrainingDataError(f"{model_dir} has no trained autoencoder: run `brainsynth train autoencoder` first")
    mu, sigma = encode_training_set(data, model_dir, device)
    scale_factor = config.scale_factor if settings.fixed_scale_factor else float(1.0 / mu.std())
    generator = torch.Generator().manual_seed(settings.seed)
    unet = build_unet(config).to(device)
    ema = copy.deepcopy(unet).eval()
    optimizer = torch.optim.Adam(unet.parameters(), lr=settings.lr)
    s = config.scheduler
    scheduler = DDPMScheduler(
        num_train_timesteps=s.num_train_timesteps,
        schedule=s.schedule,
        beta_start=s.beta_start,
        beta_end=s.beta_end,
        prediction_type=s.prediction_type,
    )
    if not 0 <= settings.condition_dropout < 1:
        from models.training.data import TrainingDataError

        raise TrainingDataError(f"condition dropout must be in [0, 1), got {settings.condition_dropout}")
    null = torch.tensor(NULL_CONDITION, dtype=torch.float32)
    checkpoint_path = model_dir / "checkpoints" / "diffusion.ckpt"
    start = 0
    if (state := load_state(checkpoint_path)) is not None:
        if float(state.get("condition_dropout", 0.0)) != settings.condition_dropout:
            from models.training.data import TrainingDataError

            raise TrainingDataError(
                f"{checkpoint_path} was trained with condition dropout {state.get('condition_dropout', 0.0)}, not "
                f"{settings.condition_dropout}: resume with the same, or start a new model directory"
            )
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        scale_factor = state["scale_factor"]
        start = state["step"]
    elif settings.init_from is not None:
        source = read_model_config(settings.init_from)
        if source.weights is None or source.weights.unet is None:
            from models.training.data import TrainingDataError

            raise TrainingDataError(f"--init-from {settings.init_from} has no trained UNet to start from")
        load_weights(unet, Path(settings.init_from), source.weights.unet, "unet")
        ema.load_state_dict(unet.state_dict())
    log = LossLog(model_dir / "logs" / "diffusion.csv", ["step", "mse", "seconds"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    latent_spatial = tuple(mu.shape[2:])
    began = time.monotonic()
    unet.train()
    for step in range(start, settings.steps):
        index = torch.randint(0, len(mu), (settings.batch_size,), generator=generator)
        eps_latent = torch.randn(mu[index].shape, generator=generator)
        latents = ((mu[index] + sigma[index] * eps_latent) * scale_factor).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, s.num_train_timesteps, (settings.batch_size,), generator=generator).to(device)
        conditioning = data.conditioning[index]
        if settings.condition_dropout > 0:  # drawn only then, so runs without dropout keep their random stream
            dropped = torch.rand(settings.batch_size, generator=generator) < settings.condition_dropout
            conditioning = torch.where(dropped[:, None], null, conditioning)
        conditioning = conditioning.to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        channels = conditioning[:, :, None, None, None].expand(-1, -1, *latent_spatial)
        with autocast:
            prediction = unet(torch.cat((noisy, channels), dim=1), timesteps=timesteps, context=conditioning[:, None])
            loss = torch.nn.functional.mse_loss(prediction.float(), _target(scheduler, latents, noise, timesteps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay = ema_decay(step, settings.ema_decay)
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), unet.parameters(), strict=True):
                averaged.lerp_(current, 1.0 - decay)
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            log.write({"step": done, "mse": loss.item(), "seconds": round(time.monotonic() - began, 1)})
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            save_state(
                checkpoint_path,
                {
                    "step": done,
                    "unet": unet.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "scale_factor": scale_factor,
                    "condition_dropout": settings.condition_dropout,
                },
            )
        if callback is not None:
            callback(done, settings.steps, {"mse": loss.item()})
    guidance = None
    if settings.condition_dropout > 0:  # the default scale asked for, else one chosen earlier, else 1
        kept = config.guidance.default_scale if config.guidance is not None else 1.0
        default = settings.default_guidance if settings.default_guidance is not None else kept
        guidance = GuidanceConfig(condition_dropout=settings.condition_dropout, default_scale=default)
    register_weights(model_dir, "unet", ema.cpu(), UNET_FILE, scale_factor=scale_factor, guidance=guidance)
    return model_dir / UNET_FILE
