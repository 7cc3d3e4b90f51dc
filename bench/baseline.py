"""The MONAI bundle's sampling loop, re-implemented as the bundle runs it (spec section 3.6), as the
baseline the project's sampler is measured against.

As in the bundle's ``scripts/sampler.py``: one subject at a time, an fp32 UNet under ``torch.no_grad()``,
the timestep passed as ``torch.Tensor((t,)).long()`` on every call, and the conditioning expanded into
constant channels inside the loop, every step. Decoding with ``decode_stage_2_outputs`` (fp16 autocast on
CUDA only). The initial latent follows the project's noise contract, so outputs are comparable subject by
subject; the latent is divided by the model's scale factor before decoding (the bundle's is 1.0).
"""

from __future__ import annotations

import torch

from models.inference.pipeline import BrainLDMPipeline
from models.inference.sampling import build_scheduler, initial_latent, subject_generator


def bundle_loop(pipeline: BrainLDMPipeline, conditioning: list[float], seed: int, steps: int = 50) -> torch.Tensor:
    """One subject's image (1, 1, X, Y, Z) exactly the bundle's way."""
    device = pipeline.device
    scheduler = build_scheduler(pipeline.config.scheduler, "ddim", steps)
    latent_shape = pipeline.config.latent_shape
    latent = initial_latent(subject_generator(seed), latent_shape).to(device)
    cond = torch.Tensor([[conditioning]]).to(device)  # (1, 1, 4), as the bundle builds it
    with torch.no_grad():
        for t in scheduler.timesteps:
            cond_channels = cond.squeeze(1)[:, :, None, None, None].expand(-1, -1, *latent_shape[1:])
            model_output = pipeline.unet(
                torch.cat((latent, cond_channels), dim=1),
                timesteps=torch.Tensor((t,)).to(device).long(),
                context=cond,
            )
            latent, _ = scheduler.step(model_output, t, latent)
        with torch.autocast("cuda", enabled=device.type == "cuda"):
            image = pipeline.autoencoder.decode_stage_2_outputs(latent / pipeline.config.scale_factor)
    return image.float()
