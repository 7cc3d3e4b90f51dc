"""Released-weights handling: GenerativeModels key names, md5 checks, import into a model directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainsynth.cli import main
from models.catalogue.bundle import import_bundle
from models.catalogue.config import read_model_config
from models.catalogue.networks import build_autoencoder, build_unet
from models.catalogue.weights import file_digest, load_state_dict_strict, sha256_file
from models.cohort.conditioning import Covariates
from models.errors import WeightsError
from models.inference.pipeline import BrainLDMPipeline
from tests.conftest import tiny_config, tiny_networks


def to_generative_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Spell a MONAI-core state dict the way MONAI GenerativeModels 0.2 saved it (spec section 3.8)."""
    renamed = {}
    for key, value in state.items():
        old = key.replace(".attn1.out_proj.", ".attn1.to_out.0.").replace(".attn2.out_proj.", ".attn2.to_out.0.")
        old = old.replace(".postconv.", ".conv.")
        renamed[old] = value.clone()
    return renamed


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    """A bundle-shaped folder with tiny networks saved under GenerativeModels key names."""
    autoencoder, unet = tiny_networks(tiny_config(), seed=3)
    folder = tmp_path / "bundle" / "models"
    folder.mkdir(parents=True)
    torch.save(to_generative_names(autoencoder.state_dict()), folder / "autoencoder.pt")
    torch.save(to_generative_names(unet.state_dict()), folder / "model.pt")
    return folder.parent


def test_generative_names_really_differ_and_load_exactly() -> None:
    config = tiny_config()
    autoencoder, unet = tiny_networks(config, seed=4)
    for source, fresh in ((autoencoder, build_autoencoder(config)), (unet, build_unet(config))):
        old = to_generative_names(source.state_dict())
        assert set(old) != set(source.state_dict())  # the test would be vacuous otherwise
        load_state_dict_strict(fresh, old, "test")
        for key, value in source.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key


def test_mapping_agrees_with_monai_load_old_state_dict() -> None:
    config = tiny_config()
    _, unet = tiny_networks(config, seed=5)
    ours, monai_loaded = build_unet(config), build_unet(config)
    load_state_dict_strict(ours, to_generative_names(unet.state_dict()), "test")
    monai_loaded.load_old_state_dict(to_generative_names(unet.state_dict()))
    for key, value in ours.state_dict().items():
        assert torch.equal(monai_loaded.state_dict()[key], value), key


def test_state_dict_that_does_not_fit_is_refused() -> None:
    config = tiny_config()
    autoencoder, _ = tiny_networks(config)
    state = autoencoder.state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(WeightsError, match="1 network keys without weights"):
        load_state_dict_strict(build_autoencoder(config), state, "test")
    state = dict(autoencoder.state_dict(), extra=torch.zeros(1))
    with pytest.raises(WeightsError, match="1 unused keys"):
        load_state_dict_strict(build_autoencoder(config), state, "test")
    wrong_shape = {k: torch.zeros(2) if i == 0 else v for i, (k, v) in enumerate(autoencoder.state_dict().items())}
    with pytest.raises(WeightsError, match="size mismatch"):
        load_state_dict_strict(build_autoencoder(config), wrong_shape, "test")


def test_import_refuses_md5_mismatch_naming_file_and_expected(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        import_bundle(bundle_dir, tmp_path / "models" / "tiny", tiny_config())
    message = str(info.value)
    assert "autoencoder.pt" in message and "329e97b3085643ff235f11f049856242" in message
    assert "--trust-unverified" in message
    assert not (tmp_path / "models" / "tiny").exists()


def test_import_with_published_md5_is_verified_and_samples(bundle_dir: Path, tmp_path: Path) -> None:
    published = {
        "autoencoder": file_digest(bundle_dir / "models" / "autoencoder.pt", "md5"),
        "unet": file_digest(bundle_dir / "models" / "model.pt", "md5"),
    }
    dest = tmp_path / "registered" / "tiny"
    config = import_bundle(bundle_dir, dest, tiny_config(), expected_md5=published)
    assert config.weights is not None and config.weights.unet.verified and config.weights.autoencoder.verified
    on_disk = read_model_config(dest)
    assert on_disk.weights == config.weights
    assert on_disk.weights.unet.sha256 == sha256_file(dest / "model.pt")
    # The imported model samples the same volume as the original networks.
    autoencoder, unet = tiny_networks(tiny_config(), seed=3)
    original = BrainLDMPipeline(tiny_config(), autoencoder, unet)
    imported = BrainLDMPipeline.from_dir(dest)
    subject = [Covariates("F", 60.0, 30000.0, 1500000.0)]
    a = original(subject, [9], num_inference_steps=3)[0].volume
    b = imported(subject, [9], num_inference_steps=3)[0].volume
    assert np.array_equal(a, b)


def test_import_trust_unverified_accepts_older_names(tmp_path: Path, bundle_dir: Path) -> None:
    (bundle_dir / "models" / "autoencoder.pt").rename(bundle_dir / "models" / "autoencoder.pth")
    (bundle_dir / "models" / "model.pt").rename(bundle_dir / "models" / "diffusion_model.pth")
    dest = tmp_path / "registered" / "finetuned"
    config = import_bundle(bundle_dir, dest, tiny_config(), trust_unverified=True)
    assert config.weights is not None and not config.weights.unet.verified
    assert "diffusion_model.pth" in config.weights.unet.source and "unverified" in config.weights.unet.source
    recorded = json.loads((dest / "model.json").read_text())
    assert recorded["weights"]["autoencoder"]["verified"] is False


def test_import_refuses_existing_destination_and_missing_files(tmp_path: Path, bundle_dir: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(WeightsError, match="already exists"):
        import_bundle(bundle_dir, tmp_path / "taken", tiny_config(), trust_unverified=True)
    (bundle_dir / "models" / "model.pt").unlink()
    with pytest.raises(WeightsError, match=r"model.pt or diffusion_model.pth"):
        import_bundle(bundle_dir, tmp_path / "new", tiny_config(), trust_unverified=True)


def test_cli_import_bundle_refuses_unpublished_files(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "import-bundle", str(bundle_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("brainsynth: error:")
    assert "does not match the published 329e97b3085643ff235f11f049856242" in err
