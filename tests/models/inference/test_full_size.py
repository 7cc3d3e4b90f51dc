"""Paper-scale runs (``-m slow``): the ukb architecture end to end at 160x224x160 on this machine."""

from __future__ import annotations

import numpy as np
import pytest

from models.catalogue.networks import build_autoencoder, build_unet
from models.catalogue.presets import ukb
from models.cohort.conditioning import Covariates
from models.inference.pipeline import BrainLDMPipeline


@pytest.mark.slow
def test_ukb_architecture_samples_a_full_size_volume() -> None:
    config = ukb()
    pipeline = BrainLDMPipeline(config, build_autoencoder(config), build_unet(config), "cpu")
    samples = pipeline([Covariates("F", 63.0, 30000.0, 1500000.0)], [0], num_inference_steps=2)
    assert samples[0].volume.shape == (160, 224, 160)
    assert np.isfinite(samples[0].volume).all()
