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


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_dpmpp2m_samples_every_parameterisation_from_its_exact_prediction(prediction_type: str) -> None:
    """Data concentrated on one point x0: a UNet that predicts exactly (the noise, the velocity
    alpha eps - sigma x0, or x0 itself) must take every start to x0. Reading a v or x0 output as epsilon
    (the solver's old assumption) lands far from it."""
    config = ukb().scheduler.model_copy(update={"prediction_type": prediction_type})
    scheduler = build_scheduler(config, "dpmpp2m", 12)
    abar = scheduler.alphas_cumprod
    x0 = torch.linspace(-1.0, 1.0, 50, dtype=torch.float64)
    x = torch.randn(50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in scheduler.timesteps:
        alpha, sigma = math.sqrt(float(abar[int(t)])), math.sqrt(1 - float(abar[int(t)]))
        eps = (x - alpha * x0) / sigma
        output = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0}[prediction_type]
        x, _ = scheduler.step(output, int(t), x)
    assert torch.allclose(x, x0, atol=1e-6)


def test_a_sampler_refuses_a_parameterisation_it_cannot_run() -> None:
    from models.cohort.design import SAMPLER_TABLE, check_sampler
    from models.errors import SamplingError

    sample_model = ukb().scheduler.model_copy(update={"prediction_type": "sample"})
    with pytest.raises(SamplingError, match="pndm cannot sample this model") as raised:
        build_scheduler(sample_model, "pndm", 10)
    assert raised.value.field == "sampler.name" and "choose ddim, ddpm, dpmpp2m" in str(raised.value)
    for name, info in SAMPLER_TABLE.items():  # every pair the table allows builds
        for prediction_type in info.prediction_types:
            config = ukb().scheduler.model_copy(update={"prediction_type": prediction_type})
            check_sampler(name, info.default_steps, 1000, prediction_type)
            assert build_scheduler(config, name, info.default_steps).timesteps.numel() == info.default_steps
