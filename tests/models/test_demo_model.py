"""The shipped demo model: registered, hash-checked, and sampling brain-like volumes quickly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainsynth.cli import main
from models.catalogue.registry import ZOO_DIR, resolve_model_dir
from models.cohort.conditioning import Covariates
from models.inference.pipeline import BrainLDMPipeline


def test_demo_model_is_shipped_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert resolve_model_dir("demo") == ZOO_DIR / "demo"
    assert main(["models", "--json"]) == 0
    entry = {e["name"]: e for e in json.loads(capsys.readouterr().out)}["demo"]
    assert entry["ready"] and entry["weights_verified"]
    assert entry["image_shape"] == [40, 56, 40] and entry["voxel_size_mm"] == [4.0, 4.0, 4.0]
    sizes = sum(p.stat().st_size for p in (ZOO_DIR / "demo").iterdir())
    assert sizes < 20 * 1024 * 1024


def test_demo_model_samples_brain_like_volumes() -> None:
    pipeline = BrainLDMPipeline.from_dir(resolve_model_dir("demo"))
    subjects = [Covariates("F", 50.0, 12000.0, 1600000.0), Covariates("M", 78.0, 30000.0, 1400000.0)]
    samples = pipeline(subjects, [1, 2], num_inference_steps=20, batch_size=2)
    for sample in samples:
        volume = np.clip(sample.volume, 0, 1)
        foreground = volume > 0.2
        # A brain fills part of the field of view and its border is background.
        assert 0.2 < foreground.mean() < 0.6
        assert volume[:2].mean() < 0.1 and volume[-2:].mean() < 0.1
        # White matter (bright) and CSF (dark) both exist inside the brain.
        inside = volume[foreground]
        assert np.percentile(inside, 90) > 0.7 and np.percentile(inside, 5) < 0.45


def _makefile_variables() -> dict[str, str]:
    """The Makefile's ``NAME ?= value`` settings, continuation lines joined by a space as make joins them."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "Makefile").read_text().replace("\\\n", " ")
    variables = {}
    for line in text.splitlines():
        name, sep, value = line.partition("?=")
        if sep and name.strip().isidentifier():
            variables[name.strip()] = " ".join(value.split())
    return variables


def recipe_commands(target: str, command: str) -> str:
    """The lines of the Makefile's ``target`` recipe that run ``brainsynth COMMAND`` (continuations joined)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "Makefile").read_text().replace("\\\n", " ")
    recipe = text.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
    return "\n".join(line for line in recipe.splitlines() if f"brainsynth {command}" in line)


def test_the_shipped_demo_model_is_what_make_demo_model_makes() -> None:
    """model.json of models/zoo/demo against the recipe: identity, base, data, steps, condition dropout, default
    guidance, and the grid's affine from the demo preset (no hand edits); the probe's training settings."""
    from models.catalogue.config import read_model_config
    from models.catalogue.presets import demo

    recipe = _makefile_variables()
    config = read_model_config(ZOO_DIR / "demo")
    assert (config.name, config.version) == ("demo", "0.4.1")
    assert config.description == recipe["DEMO_DESCRIPTION"] and config.intended_use == recipe["DEMO_INTENDED_USE"]
    assert config.guidance is not None
    assert config.guidance.condition_dropout == float(recipe["DEMO_CONDITION_DROPOUT"])
    assert config.guidance.default_scale == float(recipe["DEMO_GUIDANCE"])
    last = config.training[-1]
    assert (last.stage, last.data, last.steps, last.init_from) == (
        "diffusion", recipe["DEMO_DATA"], int(recipe["DEMO_FINETUNE_STEPS"]), recipe["DEMO_GUIDED"]
    )  # fmt: skip
    # the guided fine-tune it continues started from 0.3.1 (the recipe's first diffusion command)
    first = recipe_commands("demo-model", "train diffusion").splitlines()[0]
    assert "--model-dir $(DEMO_GUIDED)" in first and "--init-from $(DEMO_BASE)" in first
    preset = demo()
    assert config.affine == preset.affine and config.conditioning == preset.conditioning
    probe = json.loads((ZOO_DIR / "demo" / "volume_probe.json").read_text())
    assert probe["steps"] == int(recipe["DEMO_PROBE_STEPS"]) and probe["seed"] == 0
    # the probe also learned the shipped autoencoder's reconstructions (train volumes --decoded)
    assert "--decoded" in recipe_commands("demo-model", "train volumes")
    assert config.weights is not None and probe["decoder_sha256"] == config.weights.autoencoder.sha256
