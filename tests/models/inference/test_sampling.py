"""The seeded, batched sampler: noise contract, determinism, batch identity, the bundle's loop."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from models.catalogue.config import SchedulerConfig
from models.cohort.conditioning import Covariates, normalise
from models.cohort.design import subject_seed
from models.errors import SamplingError
from models.inference.execution import Execution
from models.inference.pipeline import BrainLDMPipeline
from models.inference.sampling import build_scheduler, initial_latent, subject_generator
from tests.conftest import tiny_config, tiny_networks

SUBJECTS = [
    Covariates("F", 60.0, 30000.0, 1500000.0),
    Covariates("M", 75.0, 80000.0, 1300000.0),
    Covariates("F", 48.0, 12000.0, 1650000.0),
]
SEEDS = [11, 22, 33]


@pytest.fixture(scope="module")
def pipeline() -> BrainLDMPipeline:
    # A short training schedule keeps the 1:1 DDPM chain quick on a CPU.
    config = tiny_config().model_copy(update={"scheduler": SchedulerConfig(num_train_timesteps=100)})
    autoencoder, unet = tiny_networks(config)
    return BrainLDMPipeline(config, autoencoder, unet, "cpu")


def test_subject_seed_is_documented_function() -> None:
    import hashlib

    digest = hashlib.sha256(b"brainsynth-subject:7:0").digest()
    assert subject_seed(7, 0) == int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
    seeds = {subject_seed(7, i) for i in range(1000)}
    assert len(seeds) == 1000
    assert subject_seed(7, 3) != subject_seed(8, 3)
    assert all(0 <= s < 2**63 for s in seeds)


def test_initial_latent_follows_the_noise_contract() -> None:
    expected = torch.randn((1, 3, 8, 12, 8), generator=torch.Generator("cpu").manual_seed(5), dtype=torch.float32)
    assert torch.equal(initial_latent(subject_generator(5), (3, 8, 12, 8)), expected)


def test_shapes_and_metadata(pipeline: BrainLDMPipeline) -> None:
    samples = pipeline(SUBJECTS[:2], SEEDS[:2], num_inference_steps=5, batch_size=2)
    assert [s.volume.shape for s in samples] == [(16, 24, 16)] * 2
    assert all(s.volume.dtype == np.float32 for s in samples)
    assert [s.seed for s in samples] == SEEDS[:2]
    assert samples[1].conditioning == normalise(SUBJECTS[1], pipeline.config.conditioning)


@pytest.mark.parametrize("sampler", ["ddim", "pndm", "ddpm"])
def test_same_seed_same_volume_other_seed_differs(pipeline: BrainLDMPipeline, sampler: str) -> None:
    steps = 100 if sampler == "ddpm" else 8
    first = pipeline(SUBJECTS[:1], [1], sampler=sampler, num_inference_steps=steps)[0].volume
    again = pipeline(SUBJECTS[:1], [1], sampler=sampler, num_inference_steps=steps)[0].volume
    other = pipeline(SUBJECTS[:1], [2], sampler=sampler, num_inference_steps=steps)[0].volume
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 1e-2


@pytest.mark.parametrize("sampler", ["ddim", "pndm", "ddpm"])
def test_subject_is_the_same_alone_or_in_a_batch(pipeline: BrainLDMPipeline, sampler: str) -> None:
    steps = 100 if sampler == "ddpm" else 10
    batched = pipeline(SUBJECTS, SEEDS, sampler=sampler, num_inference_steps=steps, batch_size=3)
    for index in range(3):
        alone = pipeline([SUBJECTS[index]], [SEEDS[index]], sampler=sampler, num_inference_steps=steps)[0]
        assert np.abs(batched[index].volume - alone.volume).max() <= 1e-5


def test_ddim_with_eta_draws_noise_from_the_subject_generator(pipeline: BrainLDMPipeline) -> None:
    batched = pipeline(SUBJECTS, SEEDS, num_inference_steps=6, eta=1.0, batch_size=3)
    alone = pipeline(SUBJECTS[2:], SEEDS[2:], num_inference_steps=6, eta=1.0)[0]
    deterministic = pipeline(SUBJECTS[2:], SEEDS[2:], num_inference_steps=6)[0]
    assert np.abs(batched[2].volume - alone.volume).max() <= 1e-5
    assert np.abs(alone.volume - deterministic.volume).max() > 1e-3


def test_conditioning_changes_the_output(pipeline: BrainLDMPipeline) -> None:
    young = pipeline([Covariates("F", 45.0, 30000.0, 1500000.0)], [3], num_inference_steps=5)[0].volume
    old = pipeline([Covariates("F", 80.0, 30000.0, 1500000.0)], [3], num_inference_steps=5)[0].volume
    assert np.abs(young - old).max() > 1e-3


def test_progress_callback_counts_every_step_and_decode(pipeline: BrainLDMPipeline) -> None:
    calls: list[tuple[int, int]] = []
    pipeline(SUBJECTS, SEEDS, num_inference_steps=4, batch_size=2, callback=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (15, 15)  # 3 subjects x (4 steps + 1 decode)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) == 4 + 2 + 4 + 1  # steps and decodes of the batches of 2 and 1


def _bundle_reference_loop(pipeline: BrainLDMPipeline, covariates: Covariates, seed: int) -> np.ndarray:
    """The MONAI bundle's ``scripts/sampler.py`` as described in the spec (section 3.6), batch 1."""
    config = pipeline.config
    scheduler = DDIMScheduler(
        num_train_timesteps=config.scheduler.num_train_timesteps,
        schedule="scaled_linear_beta",
        beta_start=0.0015,
        beta_end=0.0205,
        clip_sample=False,
    )
    stride = config.scheduler.num_train_timesteps // 10
    scheduler.set_timesteps(10)
    scheduler.timesteps = torch.from_numpy((np.arange(0, 10) * stride)[::-1].copy())  # the bundle era's DDIM
    conditioning = torch.tensor([normalise(covariates, config.conditioning)], dtype=torch.float32).unsqueeze(1)
    image = torch.randn((1, *config.latent_shape), generator=torch.Generator("cpu").manual_seed(seed))
    with torch.no_grad():
        cond_concat = conditioning.squeeze(1)[:, :, None, None, None].expand(-1, -1, *config.latent_shape[1:])
        for t in scheduler.timesteps:
            model_output = pipeline.unet(
                torch.cat((image, cond_concat), dim=1),
                timesteps=torch.Tensor((t,)).long(),
                context=conditioning,
            )
            image, _ = scheduler.step(model_output, t, image)
        return pipeline.autoencoder.decode_stage_2_outputs(image)[0, 0].numpy()


def test_matches_the_bundle_sampling_loop(pipeline: BrainLDMPipeline) -> None:
    for index in (0, 1):
        reference = _bundle_reference_loop(pipeline, SUBJECTS[index], SEEDS[index])
        ours = pipeline(SUBJECTS, SEEDS, num_inference_steps=10, batch_size=3)[index].volume
        assert np.abs(reference - ours).max() <= 1e-5


def test_ddim_uses_the_bundle_timesteps() -> None:
    assert build_scheduler(SchedulerConfig(), "ddim", 50).timesteps.tolist() == list(range(980, -1, -20))
    assert build_scheduler(SchedulerConfig(), "ddim", 10).timesteps.tolist() == list(range(900, -1, -100))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": "euler"}, "sampler must be one of ddim, ddpm, pndm"),
        ({"num_inference_steps": 0}, "steps must be between 1 and 100"),
        ({"num_inference_steps": 101}, "steps must be between 1 and 100"),
        ({"sampler": "ddpm", "num_inference_steps": 50}, "steps must be 100 for ddpm"),
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"sampler": "pndm", "eta": 0.5}, "eta"),
        ({"eta": -1.0}, "eta"),
    ],
)
def test_invalid_sampler_arguments(pipeline: BrainLDMPipeline, kwargs: dict, message: str) -> None:
    with pytest.raises(SamplingError, match=message):
        pipeline(SUBJECTS[:1], [1], **kwargs)


def test_seed_validation(pipeline: BrainLDMPipeline) -> None:
    with pytest.raises(SamplingError, match="seed"):
        pipeline(SUBJECTS[:1], [-1], num_inference_steps=2)
    with pytest.raises(SamplingError, match="1 subjects but 2 seeds"):
        pipeline(SUBJECTS[:1], [1, 2], num_inference_steps=2)


def test_from_dir_refuses_tampered_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from models.errors import WeightsError

    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    with open(copy / "model.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(WeightsError, match="sha256"):
        BrainLDMPipeline.from_dir(copy)


def test_cuda_request_without_gpu_is_a_clear_error(tiny_model_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SamplingError, match="no CUDA GPU"):
        BrainLDMPipeline.from_dir(tiny_model_dir, device="cuda")


def test_generate_streams_subjects_and_checks_arguments_up_front(pipeline: BrainLDMPipeline) -> None:
    decoded: list[int] = []
    original = pipeline.decode
    pipeline.decode = lambda latent, *rest: decoded.append(1) or original(latent, *rest)  # type: ignore[method-assign]
    try:
        stream = pipeline.generate(SUBJECTS, SEEDS, num_inference_steps=3, batch_size=3)
        assert decoded == []  # nothing runs before the caller asks
        first = next(stream)
        assert len(decoded) == 1  # the first subject comes out before the others are decoded
        rest = list(stream)
    finally:
        pipeline.decode = original  # type: ignore[method-assign]
    expected = pipeline(SUBJECTS, SEEDS, num_inference_steps=3, batch_size=3)
    assert [s.seed for s in [first, *rest]] == SEEDS
    assert all(np.array_equal(a.volume, b.volume) for a, b in zip([first, *rest], expected, strict=True))
    with pytest.raises(SamplingError, match="batch size"):
        pipeline.generate(SUBJECTS, SEEDS, batch_size=0)  # raised at the call, not at the first next()


def test_reduced_precision_stays_close_to_float32(pipeline: BrainLDMPipeline) -> None:
    full = pipeline(SUBJECTS[:2], SEEDS[:2], num_inference_steps=5, batch_size=2)
    half = BrainLDMPipeline(pipeline.config, pipeline.autoencoder, pipeline.unet, "cpu", Execution("bf16"))
    reduced = half(SUBJECTS[:2], SEEDS[:2], num_inference_steps=5, batch_size=2)
    difference = max(float(np.abs(a.volume - b.volume).max()) for a, b in zip(full, reduced, strict=True))
    assert 0.0 < difference < 0.05  # bf16 really ran, and stays near float32
    assert all(s.volume.dtype == np.float32 for s in reduced)
    with pytest.raises(SamplingError, match="precision"):
        Execution("int8")  # type: ignore[arg-type]


@pytest.mark.parametrize("execution", [Execution(channels_last=True), Execution(compile=True)], ids=["nhwc", "compile"])
def test_channels_last_and_compile_keep_values(execution: Execution, monkeypatch: pytest.MonkeyPatch) -> None:
    if execution.compile and shutil.which("g++") is None:
        pytest.skip("torch.compile on a CPU needs g++, which this machine lacks")
    config = tiny_config().model_copy(update={"scheduler": SchedulerConfig(num_train_timesteps=100)})
    eager = BrainLDMPipeline(config, *tiny_networks(config))
    expected = eager(SUBJECTS[:2], SEEDS[:2], num_inference_steps=3, batch_size=2)
    faster = BrainLDMPipeline(config, *tiny_networks(config), execution=execution)
    samples = faster(SUBJECTS[:2], SEEDS[:2], num_inference_steps=3, batch_size=2)
    scale = max(float(np.abs(s.volume).max()) for s in expected)
    assert all(np.abs(a.volume - b.volume).max() <= 1e-5 * scale for a, b in zip(expected, samples, strict=True))
    if execution.channels_last:
        assert faster.unet.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    else:  # without a compiler the option is refused up front, with what to do
        monkeypatch.setattr(shutil, "which", lambda _name: None)
        with pytest.raises(SamplingError, match="needs a C\\+\\+ compiler"):
            BrainLDMPipeline(config, *tiny_networks(config), execution=execution)


class _StopAfter:
    """A ``should_stop`` that turns true after ``calls`` checks and counts the checks made after that."""

    def __init__(self, calls: int) -> None:
        self.calls, self.made, self.after_true = calls, 0, 0

    def __call__(self) -> bool:
        self.made += 1
        if self.made > self.calls:
            self.after_true += 1
            return True
        return False


def test_a_stop_request_ends_sampling_inside_a_step(pipeline: BrainLDMPipeline) -> None:
    """The check runs before every convolution and linear layer, so a stop lands within one block of a step
    (a full-size step on a CPU takes seconds), not at the step's end."""
    from models.errors import GenerationStopped

    blocks_per_step = _StopAfter(10**9)
    pipeline(SUBJECTS[:1], SEEDS[:1], num_inference_steps=1, should_stop=blocks_per_step)
    assert blocks_per_step.made > 20  # checked many times within the one step and the decode
    stop = _StopAfter(5)  # true mid-way through the first UNet call
    samples = pipeline.generate(SUBJECTS[:2], SEEDS[:2], num_inference_steps=5, batch_size=2, should_stop=stop)
    with pytest.raises(GenerationStopped):
        next(samples)
    assert stop.after_true == 1  # nothing ran after the first check that said stop
    for module in (pipeline.unet, pipeline.autoencoder):  # the hooks are gone afterwards
        assert all(not m._forward_pre_hooks for m in module.modules())


def test_a_stop_between_subjects_keeps_the_subjects_already_made(pipeline: BrainLDMPipeline) -> None:
    from models.errors import GenerationStopped

    stop = {"now": False}
    samples = pipeline.generate(SUBJECTS, SEEDS, num_inference_steps=3, batch_size=1, should_stop=lambda: stop["now"])
    first = next(samples)
    reference = pipeline(SUBJECTS[:1], SEEDS[:1], num_inference_steps=3)[0]
    np.testing.assert_array_equal(first.volume, reference.volume)  # checks do not change the result
    stop["now"] = True
    with pytest.raises(GenerationStopped):
        next(samples)
