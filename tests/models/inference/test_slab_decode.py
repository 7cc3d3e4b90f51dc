"""Slab-by-slab decoding: the whole-volume decode's values (no seams) in less memory, or a clear refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainsynth.cli import main
from models.catalogue.networks import build_autoencoder
from models.catalogue.presets import demo
from models.cohort.conditioning import Covariates
from models.errors import SamplingError
from models.inference.execution import Execution
from models.inference.pipeline import BrainLDMPipeline
from models.inference.slab_decode import SlabDecoder
from tests.conftest import randomise, tiny_config, tiny_networks


@pytest.fixture(scope="module")
def autoencoder() -> torch.nn.Module:
    """The demo preset's decoder (3 levels, 64-channel res-blocks, 32 groups), weights perturbed off init."""
    torch.manual_seed(0)
    return randomise(build_autoencoder(demo()), seed=3).eval()


@pytest.mark.parametrize("slab", [1, 2, 5, 64])
def test_slab_decode_matches_whole_volume(autoencoder: torch.nn.Module, slab: int) -> None:
    latent = torch.randn(2, 3, 5, 7, 3, generator=torch.Generator().manual_seed(slab))  # odd sizes, batch 2
    with torch.inference_mode():
        whole = autoencoder.decode_stage_2_outputs(latent)
        slabbed = SlabDecoder(autoencoder, slab)(latent)
    assert slabbed.shape == whole.shape == (2, 1, 20, 28, 12)
    error = (slabbed - whole).abs()
    assert float(error.max()) <= 1e-5 * float(whole.abs().max())  # a seam would be orders of magnitude larger
    assert float(whole.std()) > 0.1  # a decoder that outputs a constant would pass trivially


def test_per_slab_statistics_would_show_seams(autoencoder: torch.nn.Module) -> None:
    """Why the whole-volume statistics matter: decoding slabs as separate volumes differs near their edges."""
    latent = torch.randn(1, 3, 6, 7, 5, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = autoencoder.decode_stage_2_outputs(latent)
        halves = torch.cat([autoencoder.decode_stage_2_outputs(part) for part in latent.split(3, dim=2)], dim=2)
    assert float((halves - whole).abs().max()) > 100 * 1e-5 * float(whole.abs().max())


def test_offload_keeps_values(autoencoder: torch.nn.Module) -> None:
    latent = torch.randn(1, 3, 4, 5, 4, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(SlabDecoder(autoencoder, 3, offload=True)(latent), SlabDecoder(autoencoder, 3)(latent))


def test_refuses_what_it_cannot_do_exactly() -> None:
    config = tiny_config()
    with_attention = build_autoencoder(config.model_copy(update={"autoencoder": {
        **config.autoencoder, "with_decoder_nonlocal_attn": True}}))  # fmt: skip
    with pytest.raises(SamplingError, match=r"SpatialAttentionBlock.*attention is global"):
        SlabDecoder(with_attention, 4)
    with pytest.raises(SamplingError, match="at least 1 row"):
        SlabDecoder(build_autoencoder(config), 0)


def test_pipeline_and_sidecar_record_the_slab(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_config()
    autoencoder, unet = tiny_networks(config)
    subjects, seeds = [Covariates("F", 61.0, 30000.0, 1500000.0)], [5]
    whole = BrainLDMPipeline(config, autoencoder, unet)(subjects, seeds, num_inference_steps=3)[0].volume
    slabbed = BrainLDMPipeline(config, autoencoder, unet, execution=Execution(decode_slab=2))(
        subjects, seeds, num_inference_steps=3
    )
    assert np.abs(slabbed[0].volume - whole).max() <= 1e-5 * np.abs(whole).max()
    channels_last = Execution(channels_last=True, decode_slab=2)
    nhwc = BrainLDMPipeline(config, *tiny_networks(config), execution=channels_last)
    assert np.abs(nhwc(subjects, seeds, num_inference_steps=3)[0].volume - whole).max() <= 1e-5 * np.abs(whole).max()

    out = tmp_path / "cohort"
    argv = ["sample", "--model", str(tiny_model_dir), "--n", "1", "--seed", "3", "--steps", "2", "--out", str(out)]
    assert main([*argv, "--decode-slab", "3", "--decode-offload"]) == 0
    sidecar = json.loads(next(out.glob("sub-*/anat/*_T1w.json")).read_text())
    assert (sidecar["DecodeSlab"], sidecar["Precision"], sidecar["ChannelsLast"], sidecar["Compiled"]) == (
        3, "float32", False, False)  # fmt: skip


def test_slab_decode_under_bf16_autocast() -> None:
    config = tiny_config()
    autoencoder, unet = tiny_networks(config)
    subjects, seeds = [Covariates("M", 70.0, 40000.0, 1400000.0)], [9]
    whole = BrainLDMPipeline(config, autoencoder, unet, execution=Execution("bf16"))
    slabbed = BrainLDMPipeline(config, autoencoder, unet, execution=Execution("bf16", decode_slab=3))
    a = whole(subjects, seeds, num_inference_steps=2)[0].volume
    b = slabbed(subjects, seeds, num_inference_steps=2)[0].volume
    assert b.dtype == np.float32 and np.abs(a - b).max() <= 0.02 * np.abs(a).max()  # bf16 rounding, no seams


def test_a_stop_request_ends_a_slab_decode_between_layers(autoencoder: torch.nn.Module) -> None:
    from models.errors import GenerationStopped

    latent = torch.randn(1, 3, 5, 7, 3, generator=torch.Generator().manual_seed(2))
    checks = {"n": 0}

    def stop_after_three() -> bool:
        checks["n"] += 1
        return checks["n"] > 3

    with torch.inference_mode(), pytest.raises(GenerationStopped):
        SlabDecoder(autoencoder, 2)(latent, stop_after_three)
    assert checks["n"] == 4
