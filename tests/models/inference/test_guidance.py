"""Classifier-free guidance (Ho & Salimans 2022): eps = eps_null + w (eps_cond - eps_null) from one batched UNet
call a step, for every sampler; w = 1 is today's conditional sampling, byte for byte; a model trained without
condition dropout refuses any other w; training with condition dropout records it in model.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.catalogue.config import NULL_CONDITION, GuidanceConfig, SchedulerConfig
from models.cohort.conditioning import Covariates
from models.errors import SamplingError
from models.inference.pipeline import BrainLDMPipeline
from models.inference.sampling import build_scheduler, denoise, subject_generator
from tests.conftest import tiny_config, tiny_networks

SUBJECTS = [Covariates("F", 60.0, 30000.0, 1500000.0), Covariates("M", 75.0, 50000.0, 1300000.0)]
SEEDS = [5, 6]
GUIDED = GuidanceConfig(condition_dropout=0.1)


@pytest.fixture(scope="module")
def networks() -> tuple:
    config = tiny_config().model_copy(update={"scheduler": SchedulerConfig(num_train_timesteps=100)})
    return config, *tiny_networks(config)


class CountingUNet(torch.nn.Module):
    """Wraps a UNet and records the batch width of each call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.widths: list[int] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.widths.append(x.shape[0])
        return self.unet(x, timesteps=timesteps, context=context)


def _denoise(config, unet, sampler: str, conditioning: torch.Tensor, guidance: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
    steps = 100 if sampler == "ddpm" else 4
    with torch.inference_mode():
        return denoise(unet, build_scheduler(config.scheduler, sampler, steps), sampler, conditioning,
                       [subject_generator(s) for s in SEEDS], config.latent_shape, guidance=guidance,
                       null_condition=NULL_CONDITION)  # fmt: skip


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "pndm", "dpmpp2m"])
def test_guidance_combines_both_branches_of_one_batched_call(networks: tuple, sampler: str) -> None:
    config, _, unet = networks
    unet.eval()
    counting = CountingUNet(unet)
    conditioning = torch.tensor([[0.0, 0.4, 0.3, 0.6], [1.0, 0.7, 0.5, 0.2]])
    guided = _denoise(config, counting, sampler, conditioning, 3.0)
    assert set(counting.widths) == {4}  # both branches of both subjects in each single call
    # w = 0 is the unconditional model: the same as conditioning every subject on the null condition
    unconditional = _denoise(config, unet, sampler, conditioning, 0.0)
    null = torch.tensor([NULL_CONDITION, NULL_CONDITION])
    assert torch.allclose(unconditional, _denoise(config, unet, sampler, null, 1.0), atol=1e-5)
    conditional = _denoise(config, unet, sampler, conditioning, 1.0)
    assert not torch.allclose(guided, conditional, atol=1e-3)  # guidance changes the sample
    with pytest.raises(SamplingError, match="null condition"):
        denoise(unet, build_scheduler(config.scheduler, "ddim", 2), "ddim", conditioning,
                [subject_generator(s) for s in SEEDS], config.latent_shape, guidance=2.0)  # fmt: skip


def test_guidance_one_is_todays_sampling_byte_for_byte(networks: tuple) -> None:
    config, autoencoder, unet = networks
    plain = BrainLDMPipeline(config, autoencoder, unet, "cpu")
    before = [s.volume for s in plain(SUBJECTS, SEEDS, num_inference_steps=4, batch_size=2)]
    guided_model = BrainLDMPipeline(config.model_copy(update={"guidance": GUIDED}), autoencoder, unet, "cpu")
    at_one = guided_model(SUBJECTS, SEEDS, num_inference_steps=4, batch_size=2, guidance=1.0)
    assert all(np.array_equal(a, s.volume) for a, s in zip(before, at_one, strict=True))
    assert {s.guidance for s in at_one} == {1.0}
    at_three = guided_model(SUBJECTS, SEEDS, num_inference_steps=4, batch_size=2, guidance=3.0)
    assert {s.guidance for s in at_three} == {3.0} and not np.array_equal(at_three[0].volume, before[0])
    # the model's default scale applies when a request names none
    defaulted = config.model_copy(update={"guidance": GUIDED.model_copy(update={"default_scale": 3.0})})
    by_default = BrainLDMPipeline(defaulted, autoencoder, unet, "cpu")(SUBJECTS, SEEDS, num_inference_steps=4,
                                                                       batch_size=2)  # fmt: skip
    assert np.array_equal(by_default[0].volume, at_three[0].volume)


def test_a_model_without_condition_dropout_refuses_other_scales(networks: tuple) -> None:
    config, autoencoder, unet = networks
    plain = BrainLDMPipeline(config, autoencoder, unet, "cpu")
    with pytest.raises(SamplingError, match="not trained for classifier-free guidance") as refused:
        plain(SUBJECTS, SEEDS, num_inference_steps=2, guidance=2.0)
    assert refused.value.field == "guidance"
    guided = config.model_copy(update={"guidance": GUIDED})
    with pytest.raises(SamplingError, match="between 0 and 10"):
        guided.guidance_scale(11.0)
    assert config.guidance_scale(None) == 1.0 and guided.guidance_scale(2.5) == 2.5


def test_sample_records_the_scale_and_names_the_flag(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import json

    from brainsynth.cli import main

    refused = tmp_path / "refused"
    code = main(["sample", "--model", str(tiny_model_dir), "--n", "1", "--seed", "1", "--steps", "2",
                 "--guidance", "2", "--out", str(refused)])  # fmt: skip
    assert code == 2 and "--guidance: model 'tiny' was not trained for classifier-free guidance" in (
        capsys.readouterr().err
    )
    out = tmp_path / "plain"
    assert main(["sample", "--model", str(tiny_model_dir), "--n", "1", "--seed", "1", "--steps", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    (row,) = list(csv.DictReader((out / "participants.tsv").open(), delimiter="\t"))
    assert row["guidance"] == "1.0"
    sidecar = json.loads((out / "sub-000001" / "anat" / "sub-000001_T1w.json").read_text())
    assert sidecar["GuidanceScale"] == 1.0
    described = json.loads((out / "participants.json").read_text())
    assert "classifier-free guidance" in described["guidance"]["Description"]


def test_a_participants_file_regenerates_at_its_recorded_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from brainsynth.cli import main
    from tests.conftest import make_model_dir

    model = make_model_dir(tmp_path / "tiny-cfg", tiny_config("tiny-cfg").model_copy(update={"guidance": GUIDED}))
    first = tmp_path / "first"
    assert main(["sample", "--model", str(model), "--n", "2", "--seed", "3", "--steps", "2", "--batch-size", "2",
                 "--guidance", "2.5", "--out", str(first)]) == 0  # fmt: skip
    again = tmp_path / "again"
    assert main(["sample", "--model", str(model), "--subjects", str(first / "participants.tsv"), "--batch-size", "2",
                 "--out", str(again)]) == 0  # fmt: skip
    assert (again / "participants.tsv").read_text() == (first / "participants.tsv").read_text()
    image = "sub-000002/anat/sub-000002_T1w.nii.gz"
    assert (again / image).read_bytes() == (first / image).read_bytes()
    capsys.readouterr()
    code = main(["sample", "--model", str(model), "--subjects", str(first / "participants.tsv"), "--guidance", "3",
                 "--out", str(tmp_path / "other")])  # fmt: skip
    assert code == 2 and "was made with guidance 2.5, and --guidance asks for 3" in capsys.readouterr().err
