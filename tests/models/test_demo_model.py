"""The shipped demo model: registered, hash-checked, and sampling brain-like volumes quickly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brainsynth.cli import main
from models.catalogue.registry import ZOO_DIR, resolve_model_dir
from models.cohort.conditioning import Covariates
from models.inference.pipeline import BrainLDMPipeline

ROOT = Path(__file__).resolve().parents[2]


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
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    variables = {}
    for line in text.splitlines():
        name, sep, value = line.partition("?=")
        if sep and name.strip().isidentifier():
            variables[name.strip()] = " ".join(value.split())
    return variables


def recipe_commands(target: str, command: str) -> str:
    """The lines of the Makefile's ``target`` recipe that run ``brainsynth COMMAND`` (continuations joined)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    recipe = text.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
    return "\n".join(line for line in recipe.splitlines() if f"brainsynth {command}" in line)


def test_the_shipped_demo_model_is_what_make_demo_model_makes() -> None:
    """model.json of models/zoo/demo against the recipe: identity, base, data, steps, condition dropout, default
    guidance, and the grid's affine from the demo preset (no hand edits); the probe's training settings."""
    from models.catalogue.config import read_model_config
    from models.catalogue.presets import demo

    recipe = _makefile_variables()
    config = read_model_config(ZOO_DIR / "demo")
    assert (config.name, config.version) == ("demo", "0.4.2")
    assert config.description == recipe["DEMO_DESCRIPTION"] and config.intended_use == recipe["DEMO_INTENDED_USE"]
    assert config.guidance is not None
    assert config.guidance.condition_dropout == float(recipe["DEMO_CONDITION_DROPOUT"])
    assert config.guidance.default_scale == float(recipe["DEMO_GUIDANCE"])
    last = config.training[-1]
    all_data = (recipe["DEMO_DATA"], recipe["DEMO_LOW_DATA"], recipe["DEMO_HIGH_DATA"])
    assert (last.stage, last.data, last.steps, last.init_from) == (
        "diffusion", all_data, int(recipe["DEMO_ENDS_STEPS"]), recipe["DEMO_TUNED"]
    )  # fmt: skip
    from models.catalogue.weights import sha256_file

    for folder, digest in zip(all_data, last.participants_sha256, strict=True):
        if (ROOT / folder / "participants.tsv").is_file():  # the phantoms, where this machine made them
            assert sha256_file(ROOT / folder / "participants.tsv") == digest
    # the chain it continues: 0.3.1 -> 0.4.0 (guided) -> 0.4.1 -> this, each the previous command's model
    chain = recipe_commands("demo-model", "train diffusion").splitlines()
    assert "--model-dir $(DEMO_GUIDED)" in chain[0] and "--init-from $(DEMO_BASE)" in chain[0]
    assert "--model-dir $(DEMO_TUNED)" in chain[1] and "--init-from $(DEMO_GUIDED)" in chain[1]
    assert "--model-dir $(DEMO_MODEL)" in chain[2] and "--init-from $(DEMO_TUNED)" in chain[2]
    assert "--data $(DEMO_DATA) $(DEMO_LOW_DATA) $(DEMO_HIGH_DATA)" in chain[2]
    # the end phantoms are made by the recipe, at the ends of the accepted ventricle range
    phantoms = recipe_commands("demo-model", "phantoms")
    assert "--ventricles 5000 12000 --out $(DEMO_LOW_DATA)" in phantoms
    assert "--ventricles 50000 65000 --out $(DEMO_HIGH_DATA)" in phantoms
    preset = demo()
    assert config.affine == preset.affine and config.conditioning == preset.conditioning
    probe = json.loads((ZOO_DIR / "demo" / "volume_probe.json").read_text())
    assert probe["steps"] == int(recipe["DEMO_PROBE_STEPS"]) and probe["seed"] == 0
    # the probe also learned the shipped autoencoder's reconstructions (train volumes --decoded)
    assert "--decoded" in recipe_commands("demo-model", "train volumes")
    assert "--data $(DEMO_DATA) $(DEMO_LOW_DATA) $(DEMO_HIGH_DATA)" in recipe_commands("demo-model", "train volumes")
    assert config.weights is not None and probe["decoder_sha256"] == config.weights.autoencoder.sha256
