"""DPM-Solver++(2M) against the exact probability-flow solution for Gaussian data, and against DDIM."""

from __future__ import annotations

import math

import pytest
import torch

from models.catalogue.presets import ukb
from models.inference.sampling import build_scheduler

SCALE = 1.0  # data ~ N(0, SCALE**2): the exact epsilon is linear in x, the ODE solution is a rescaling


def _solve(sampler: str, steps: int, x_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scheduler = build_scheduler(ukb().scheduler, sampler, steps)
    abar = scheduler.alphas_cumprod.double()
    x = x_T.clone()
    for t in scheduler.timesteps:
        a = float(abar[int(t)])
        eps = x * math.sqrt(1 - a) / (a * SCALE**2 + 1 - a)  # E[eps | x_t] for Gaussian data
        x, _ = scheduler.step(eps, int(t), x)
    start = float(abar[int(scheduler.timesteps[0])])
    exact = x_T * SCALE / math.sqrt(start * SCALE**2 + 1 - start)
    return x, exact


@pytest.mark.parametrize("steps", [10, 15, 25])
def test_second_order_beats_ddim_at_equal_steps(steps: int) -> None:
    x_T = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dpm, exact = _solve("dpmpp2m", steps, x_T)
    ddim, _ = _solve("ddim", steps, x_T)
    dpm_error = (dpm - exact).abs().max().item()
    # DDIM's schedule starts at another timestep (980 for 50 steps), so each has its own exact solution
    ddim_error = (ddim - _solve("ddim", steps, x_T)[1]).abs().max().item()
    assert dpm_error < 0.7 * ddim_error


def test_dpmpp2m_converges_to_the_exact_solution() -> None:
    x_T = torch.randn(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = []
    for steps in (10, 20, 40, 80, 400):
        solved, exact = _solve("dpmpp2m", steps, x_T)
        errors.append((solved - exact).abs().max().item())
    assert (
        errors == sorted(errors, reverse=True) and errors[-1] < 2e-3 * exact.abs().max().item()
    )  # left: the x0 jump from t = 0


def test_dpmpp2m_refuses_fewer_than_two_steps_and_out_of_order_calls() -> None:
    from models.errors import SamplingError

    with pytest.raises(SamplingError, match="at least 2"):
        build_scheduler(ukb().scheduler, "dpmpp2m", 1)
    scheduler = build_scheduler(ukb().scheduler, "dpmpp2m", 4)
    with pytest.raises(ValueError, match="expected timestep 999"):
        scheduler.step(torch.zeros(2), 500, torch.zeros(2))
