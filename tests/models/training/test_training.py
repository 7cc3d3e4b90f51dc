"""Both training stages on a 10-subject phantom set: losses logged, resumable, a model that samples."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from brainsynth.cli import main
from models.catalogue.config import read_model_config
from models.cohort.nifti import mni_centred_affine
from models.errors import WeightsError
from models.inference.pipeline import BrainLDMPipeline
from models.training.autoencoder import kl_divergence
from models.training.phantoms import write_phantom_cohort
from tests.conftest import tiny_config

GRID = {
    "image_shape": (16, 24, 16),
    "voxel_size_mm": (10.0, 10.0, 10.0),
    "affine": mni_centred_affine((16, 24, 16), 10.0),
}


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_cohort(10, 3, tmp_path_factory.mktemp("data") / "phantoms", tiny_config())


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_kl_divergence_is_zero_for_the_prior_and_positive_otherwise() -> None:
    assert kl_divergence(torch.zeros(2, 3, 4), torch.ones(2, 3, 4)).item() == 0.0
    assert kl_divergence(torch.ones(2, 3, 4), torch.ones(2, 3, 4)).item() == pytest.approx(6.0)


def test_ema_decay_warms_up() -> None:
    from models.training.diffusion import ema_decay

    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(90, 0.999) == pytest.approx(0.91)
    assert ema_decay(100_000, 0.999) == 0.999
    # What is left of the initial weights after 1500 steps is negligible (it was 22 % without warm-up).
    remaining = 1.0
    for step in range(1500):
        remaining *= ema_decay(step, 0.999)
    assert remaining < 1e-3


def test_two_stage_training_resumes_and_samples(
    phantom_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import brainsynth.local_commands as cli

    model_dir = tmp_path / "model"
    monkeypatch.setitem(cli.PRESETS, "demo", tiny_config)  # the tiny grid stands in for the demo preset
    base = ["--data", str(phantom_set), "--model-dir", str(model_dir), "--batch-size", "2", "--device", "cpu"]
    assert main(["train", "autoencoder", *base, "--steps", "3"]) == 0
    first = read_model_config(model_dir)
    assert first.weights is not None and first.weights.unet is None
    # a model trained here is its own: named after its folder, version 0.1.0, never the preset's identity
    assert (first.name, first.version) == ("model", "0.1.0")
    assert "trained with `brainsynth train`" in first.description and str(phantom_set) in first.description
    assert "phantoms" not in first.intended_use and "research use only" in first.intended_use
    assert main(["train", "autoencoder", *base, "--steps", "6"]) == 0  # resumes at step 3
    log = _rows(model_dir / "logs" / "autoencoder.csv")
    assert [int(r["step"]) for r in log] == [3, 6]
    assert all(float(r["l1"]) > 0 for r in log)
    assert torch.load(model_dir / "checkpoints" / "autoencoder.ckpt", weights_only=False)["step"] == 6

    with pytest.raises(WeightsError, match="no diffusion model yet"):
        BrainLDMPipeline.from_dir(model_dir)
    assert main(["train", "diffusion", *base, "--steps", "4"]) == 0
    trained = read_model_config(model_dir)
    assert trained.is_complete and trained.weights_verified
    import hashlib

    tsv_hash = hashlib.sha256((phantom_set / "participants.tsv").read_bytes()).hexdigest()
    assert [(t.stage, t.steps, t.subjects) for t in trained.training] == [
        ("autoencoder", 3, 10), ("autoencoder", 6, 10), ("diffusion", 4, 10)
    ]  # fmt: skip
    assert {t.participants_sha256 for t in trained.training} == {tsv_hash}
    assert trained.training[0].data == str(phantom_set)
    assert trained.scale_factor != 1.0  # measured from the latents' std
    assert [int(r["step"]) for r in _rows(model_dir / "logs" / "diffusion.csv")] == [4]

    out = tmp_path / "cohort"
    assert (
        main(["sample", "--model", str(model_dir), "--n", "2", "--seed", "1", "--out", str(out), "--steps", "3"]) == 0
    )
    assert len(list(out.glob("sub-*/anat/*_T1w.nii.gz"))) == 2

    # A fine-tune in a new directory takes the autoencoder as is and starts the UNet from the source's.
    tuned = tmp_path / "tuned"
    fine = ["--data", str(phantom_set), "--model-dir", str(tuned), "--batch-size", "2", "--device", "cpu"]
    assert main(["train", "diffusion", *fine, "--init-from", str(model_dir), "--steps", "1", "--lr", "1e-12"]) == 0
    tuned_config = read_model_config(tuned)
    assert tuned_config.name == "tuned" and tuned_config.training[-1].init_from == str(model_dir)
    assert tuned_config.weights.autoencoder.sha256 == trained.weights.autoencoder.sha256  # type: ignore[union-attr]
    source_unet = torch.load(model_dir / "model.pt", weights_only=True)
    tuned_unet = torch.load(tuned / "model.pt", weights_only=True)
    assert max((source_unet[k] - tuned_unet[k]).abs().max().item() for k in source_unet) < 1e-6
    assert tuned_config.guidance is None  # trained without condition dropout: guidance 1 only

    # An autoencoder fine-tune starts from the source's autoencoder (not a fresh one) and drops no provenance.
    refit = tmp_path / "refit"
    again = ["--data", str(phantom_set), "--model-dir", str(refit), "--batch-size", "2", "--device", "cpu"]
    assert main(["train", "autoencoder", *again, "--init-from", str(model_dir), "--steps", "1", "--lr", "1e-12"]) == 0
    source_ae = torch.load(model_dir / "autoencoder.pt", weights_only=True)
    refit_ae = torch.load(refit / "autoencoder.pt", weights_only=True)
    assert max((source_ae[k].float() - refit_ae[k].float()).abs().max().item() for k in source_ae) < 1e-6
    assert read_model_config(refit).training[-1].init_from == str(model_dir)
    fresh = tmp_path / "fresh"
    assert main(["train", "autoencoder", "--data", str(phantom_set), "--model-dir", str(fresh), "--batch-size", "2",
                 "--device", "cpu", "--steps", "1", "--lr", "1e-12"]) == 0  # fmt: skip
    fresh_ae = torch.load(fresh / "autoencoder.pt", weights_only=True)
    assert max((source_ae[k].float() - fresh_ae[k].float()).abs().max().item() for k in source_ae) > 1e-3

    # Condition dropout (classifier-free guidance): model.json records it; a resume must keep it; the model
    # then samples at any scale, and the scale is recorded per subject.
    guided = tmp_path / "guided"
    cfg = ["--data", str(phantom_set), "--model-dir", str(guided), "--batch-size", "2", "--device", "cpu"]
    assert main(["train", "diffusion", *cfg, "--init-from", str(model_dir), "--steps", "2",
                 "--condition-dropout", "0.5"]) == 0  # fmt: skip
    guidance = read_model_config(guided).guidance
    assert guidance is not None and guidance.condition_dropout == 0.5 and guidance.null_condition == (-1, -1, -1, -1)
    assert main(["train", "diffusion", *cfg, "--steps", "3", "--condition-dropout", "0.2"]) == 1  # refused
    assert main(["train", "diffusion", *cfg, "--steps", "3", "--condition-dropout", "1.5"]) == 2
    out = tmp_path / "guided-cohort"
    assert main(["sample", "--model", str(guided), "--n", "1", "--seed", "1", "--steps", "2", "--guidance", "3",
                 "--out", str(out)]) == 0  # fmt: skip
    (row,) = list(csv.DictReader((out / "participants.tsv").open(), delimiter="\t"))
    assert row["guidance"] == "3.0"
    # the default scale (chosen from a sweep) is set by the same command at its end: nothing is trained again
    runs = len(read_model_config(guided).training)
    weights = read_model_config(guided).weights
    assert main(["train", "diffusion", *cfg, "--init-from", str(model_dir), "--steps", "2", "--condition-dropout",
                 "0.5", "--default-guidance", "2"]) == 0  # fmt: skip
    again = read_model_config(guided)
    assert again.guidance is not None and again.guidance.default_scale == 2.0
    assert len(again.training) == runs and again.weights == weights
    assert main(["train", "diffusion", *base, "--steps", "4", "--default-guidance", "2"]) == 2  # no dropout


def test_training_reads_several_folders_and_records_each(
    phantom_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--data A B trains on both folders (A's subjects, then B's); model.json names each with its hash."""
    import hashlib

    import brainsynth.local_commands as cli
    from models.catalogue.config import TrainingProvenance
    from models.training.data import load_training_set

    monkeypatch.setitem(cli.PRESETS, "demo", tiny_config)
    ends = write_phantom_cohort(3, 11, tmp_path / "ends", tiny_config(), range_fraction=1.0,
                                ventricle_range=(7_000.0, 9_000.0))  # fmt: skip
    both = load_training_set([phantom_set, ends], tiny_config())
    alone = load_training_set(ends, tiny_config())
    assert len(both.participant_ids) == 13 and torch.equal(both.images[10:], alone.images)
    assert torch.equal(both.conditioning[10:], alone.conditioning)
    model_dir = tmp_path / "model"
    base = ["--model-dir", str(model_dir), "--batch-size", "2", "--device", "cpu", "--steps", "1"]
    assert main(["train", "autoencoder", "--data", str(phantom_set), str(ends), *base]) == 0
    (run,) = read_model_config(model_dir).training
    hashes = tuple(hashlib.sha256((d / "participants.tsv").read_bytes()).hexdigest() for d in (phantom_set, ends))
    assert (run.data, run.subjects, run.participants_sha256) == ((str(phantom_set), str(ends)), 13, hashes)
    assert str(ends) in read_model_config(model_dir).description
    with pytest.raises(ValueError, match="one hash per training folder"):
        TrainingProvenance(stage="diffusion", data=("a", "b"), subjects=2, participants_sha256=hashes[0], steps=1)


def test_training_data_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "autoencoder", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--steps", "1"])
    assert code == 1
    assert "participants.tsv not found" in capsys.readouterr().err
    assert (
        main(["train", "diffusion", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--steps", "0"]) == 2
    )


def test_train_takes_a_name_version_and_description_and_refuses_bad_names(
    phantom_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import brainsynth.local_commands as cli

    monkeypatch.setitem(cli.PRESETS, "demo", tiny_config)
    base = ["--data", str(phantom_set), "--batch-size", "2", "--device", "cpu", "--steps", "1"]
    named = ["--name", "lab-ldm", "--version", "2.0.0", "--description", "our scanner's T1w"]
    assert main(["train", "autoencoder", *base, "--model-dir", str(tmp_path / "a"), *named]) == 0
    config = read_model_config(tmp_path / "a")
    assert (config.name, config.version, config.description) == ("lab-ldm", "2.0.0", "our scanner's T1w")
    assert main(["train", "autoencoder", *base, "--model-dir", str(tmp_path / "b"), "--name", "no spaces"]) == 2
    assert "--name" in capsys.readouterr().err


def test_register_copies_a_model_under_its_name_and_refuses_what_it_should(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.catalogue.registry import list_models, resolve_model_dir

    assert main(["models", "register", str(tiny_model_dir), "--name", "lab-model"]) == 0
    registered = resolve_model_dir("lab-model")
    assert read_model_config(registered).name == "lab-model"  # the copy reports the name it is known by
    assert {e.name for e in list_models() if e.ready} >= {"lab-model", "demo"}
    BrainLDMPipeline.from_dir(registered)  # hashes verified, loads
    assert main(["models", "register", str(tiny_model_dir), "--name", "lab-model"]) == 2  # taken
    assert "registered already" in capsys.readouterr().err
    assert main(["models", "register", str(tiny_model_dir), "--link"]) == 0  # under its own name, "tiny"
    assert resolve_model_dir("tiny").is_symlink()
    assert main(["models", "register", str(tiny_model_dir), "--link", "--name", "other"]) == 2
    incomplete = tmp_path / "half"
    incomplete.mkdir()
    (incomplete / "model.json").write_text((tiny_model_dir / "model.json").read_text())
    config = read_model_config(incomplete)
    from models.catalogue.config import write_model_config

    assert config.weights is not None
    write_model_config(
        incomplete, config.model_copy(update={"weights": config.weights.model_copy(update={"unet": None})})
    )
    assert main(["models", "register", str(incomplete), "--name", "half"]) == 2
    assert "no trained diffusion model" in capsys.readouterr().err


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_diffusion_stage_learns_the_models_own_parameterisation(prediction_type: str) -> None:
    """The training target follows model.json's prediction_type (it was the noise whatever that said)."""
    from monai.networks.schedulers import DDPMScheduler

    from models.training.diffusion import _target

    scheduler = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015,
                              beta_end=0.0205, prediction_type=prediction_type)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 2, 4, generator=generator), torch.randn(3, 2, 4, generator=generator)
    timesteps = torch.tensor([10, 500, 990])
    abar = scheduler.alphas_cumprod[timesteps][:, None, None]
    expected = {"epsilon": noise, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * latents,
                "sample": latents}[prediction_type]  # fmt: skip
    assert torch.allclose(_target(scheduler, latents, noise, timesteps), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("extra", "says"),
    [([], "'demo' is shipped with BrainSynth"), (["--name", "ukb"], "'ukb' is a built-in preset")],
)
def test_register_refuses_a_name_the_catalogue_already_resolves(
    tmp_path: Path, extra: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy named demo (its model.json's name) or ukb would shadow the shipped model or the paper's preset."""
    from models.catalogue.registry import list_models
    from tests.conftest import make_model_dir

    look_alike = make_model_dir(tmp_path / "mine", tiny_config("demo"))
    assert main(["models", "register", str(look_alike), *extra]) == 2
    assert says in capsys.readouterr().err
    listed = {entry.name: entry for entry in list_models(check_networks=False)}
    assert listed["demo"].config.image_shape == (40, 56, 40) and listed["ukb"].directory is None
