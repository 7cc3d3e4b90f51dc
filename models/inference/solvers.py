"""DPM-Solver++(2M): a second-order multistep solver of the diffusion probability-flow ODE
(Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models",
arXiv:2211.01095, Algorithm 2).

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and the data
prediction x0 from the UNet's output (epsilon: x0 = (x - sigma_s eps) / alpha_s; v-prediction, Salimans & Ho
2022: x0 = alpha_s x - sigma_s v; sample: the output itself), a step from s to t with h = lambda_t - lambda_s is

    x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D,

with D = x0 on the first step (this is DDIM) and D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h,
afterwards, except into the last timestep (t = 0), where lambda grows so fast that r is small and the
second-order extrapolation overshoots: that step is first order ("lower-order final", as in the
reference implementation). The last step goes to the clean sample (alpha = 1, sigma = 0), where the update is x = x0
(first order, as DDIM's last step with alpha_prev = 1). Timesteps: K integers from T-1 down to 0, evenly
spaced. It exposes the ``timesteps`` / ``step`` interface of MONAI's schedulers so the sampler drives it.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class DPMSolverPP2M:
    """Deterministic, stateful: make a fresh one per sampling run (``models.inference.sampling.build_scheduler``)."""

    def __init__(
        self, alphas_cumprod: torch.Tensor, num_inference_steps: int, prediction_type: str = "epsilon"
    ) -> None:
        total = len(alphas_cumprod)
        if not 2 <= num_inference_steps <= total:
            raise ValueError(f"dpmpp2m needs 2 to {total} steps, got {num_inference_steps}")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"dpmpp2m: unknown prediction type {prediction_type!r}")
        self.prediction_type = prediction_type
        self.alphas_cumprod = alphas_cumprod.double()
        steps = np.linspace(total - 1, 0, num_inference_steps).round().astype(np.int64)
        self.timesteps = torch.from_numpy(steps)
        self._index = 0
        self._previous: tuple[torch.Tensor, float] | None = None  # (x0, h) of the last step

    def _coefficients(self, t: int) -> tuple[float, float, float]:
        abar = float(self.alphas_cumprod[t])
        alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
        return alpha, sigma, math.log(alpha / sigma)

    def _data_prediction(self, output: torch.Tensor, sample: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """x0 from the UNet's output for the model's parameterisation."""
        if self.prediction_type == "epsilon":
            return (sample - sigma * output) / alpha
        if self.prediction_type == "v_prediction":
            return alpha * sample - sigma * output
        return output

    def step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One solver step from ``timestep``; returns (next sample, predicted x0)."""
        if int(timestep) != int(self.timesteps[self._index]):
            raise ValueError(f"expected timestep {int(self.timesteps[self._index])}, got {int(timestep)}")
        alpha_s, sigma_s, lambda_s = self._coefficients(int(timestep))
        x0 = self._data_prediction(model_output, sample, alpha_s, sigma_s)
        self._index += 1
        if self._index == len(self.timesteps):
            return x0, x0
        alpha_t, sigma_t, lambda_t = self._coefficients(int(self.timesteps[self._index]))
        h = lambda_t - lambda_s
        if self._previous is None or self._index == len(self.timesteps) - 1:
            d = x0  # first order on the first step and into t = 0, where h jumps (lower-order final)
        else:
            previous_x0, previous_h = self._previous
            r = previous_h / h
            d = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * previous_x0
        self._previous = (x0, h)
        return (sigma_t / sigma_s) * sample - alpha_t * math.expm1(-h) * d, x0
