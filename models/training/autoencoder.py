"""Stage 1: the KL autoencoder (Pinaya et al. 2022, section 2.2).

Loss = L1 + kl_weight * KL + adv_weight * patch adversarial (least squares, MONAI ``PatchDiscriminator``,
from ``adv_start`` on). The paper also uses a perceptual (LPIPS) loss; its pretrained feature network
must be downloaded, which cannot happen here, so it is off and the log says so. Weights default to the
same-lab recipe (spec section 1.2): adversarial 0.005; KL 1e-6 on the per-sample sum.
With ``init_from`` (a model directory), training starts from that model's autoencoder weights (a fine-tune on
new data; the discriminator starts afresh) unless a checkpoint resumes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator

from models.catalogue.config import AUTOENCODER_FILE, read_model_config
from models.catalogue.networks import build_autoencoder, load_weights
from models.training.checkpoint import LossLog, load_state, register_weights, save_state
from models.training.data import TrainingSet

ProgressCallback = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class AutoencoderSettings:
    steps: int = 2000
    batch_size: int = 4
    lr: float = 2e-4
    disc_lr: float = 2e-4
    kl_weight: float = 1e-6
    adv_weight: float = 0.005
    adv_start: int = 500
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    #: a model directory whose autoencoder weights start the training (a fine-tune), when there is no checkpoint
    init_from: Path | None = None


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)), summed over latent elements, averaged over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1.0)
    return kl.flatten(1).sum(1).mean()


def train_autoencoder(
    data: TrainingSet,
    model_dir: Path,
    settings: AutoencoderSettings,
    device: torch.device,
    callback: ProgressCallback | None = None,
) -> Path:
    """Train (or resume) the autoencoder of ``model_dir``; writes ``autoencoder.pt`` and updates model.json.

    Resumes from ``model_dir/checkpoints/autoencoder.ckpt`` when present; logs losses to
    ``model_dir/logs/autoencoder.csv``.
    """
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    torch.manual_seed(settings.seed)  # the KL sampling inside AutoencoderKL uses the global generator
    autoencoder = build_autoencoder(config).to(device)
    discriminator = PatchDiscriminator(spatial_dims=3, channels=32, in_channels=1, num_layers_d=3).to(device)
    opt_g = torch.optim.Adam(autoencoder.parameters(), lr=settings.lr)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=settings.disc_lr)
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    batches = torch.Generator().manual_seed(settings.seed)
    checkpoint_path = model_dir / "checkpoints" / "autoencoder.ckpt"
    start = 0
    if (state := load_state(checkpoint_path)) is not None:
        autoencoder.load_state_dict(state["autoencoder"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        batches.set_state(state["batches"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    elif settings.init_from is not None:
        source = read_model_config(settings.init_from)
        if source.weights is None:
            from models.training.data import TrainingDataError

            raise TrainingDataError(f"--init-from {settings.init_from} has no trained autoencoder to start from")
        load_weights(autoencoder, Path(settings.init_from), source.weights.autoencoder, "autoencoder")
    log = LossLog(model_dir / "logs" / "autoencoder.csv", ["step", "l1", "kl", "adv_g", "adv_d", "seconds"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    began = time.monotonic()
    autoencoder.train()
    for step in range(start, settings.steps):
        index = torch.randint(0, len(data.images), (settings.batch_size,), generator=batches)
        images = data.images[index].to(device)
        with autocast:
            reconstruction, mu, sigma = autoencoder(images)
            l1 = (reconstruction.float() - images).abs().mean()
            kl = kl_divergence(mu.float(), sigma.float())
            loss = l1 + settings.kl_weight * kl
            adv_g = torch.zeros((), device=device)
            if step >= settings.adv_start:
                adv_g = adversarial(discriminator(reconstruction.contiguous())[-1], True, False)
                loss = loss + settings.adv_weight * adv_g
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        adv_d = torch.zeros((), device=device)
        if step >= settings.adv_start:
            with autocast:
                fake = adversarial(discriminator(reconstruction.detach().contiguous())[-1], False, True)
                real = adversarial(discriminator(images.contiguous())[-1], True, True)
                adv_d = 0.5 * (fake + real)
            opt_d.zero_grad(set_to_none=True)
            (settings.adv_weight * adv_d).backward()
            opt_d.step()
        done = step + 1
        losses = {"l1": l1.item(), "kl": kl.item(), "adv_g": float(adv_g), "adv_d": float(adv_d)}
        if done % settings.log_every == 0 or done == settings.steps:
            log.write({"step": done, **losses, "seconds": round(time.monotonic() - began, 1)})
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            save_state(
                checkpoint_path,
                {
                    "step": done,
                    "autoencoder": autoencoder.state_dict(),
                    "discriminator": discriminator.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "batches": batches.get_state(),
                    "torch_rng": torch.get_rng_state(),
                },
            )
        if callback is not None:
            callback(done, settings.steps, losses)
    autoencoder.eval().cpu()
    register_weights(model_dir, "autoencoder", autoencoder, AUTOENCODER_FILE)
    return model_dir / AUTOENCODER_FILE
