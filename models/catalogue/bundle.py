"""Import the released MONAI bundle weights of Pinaya et al. 2022 into a model directory.

Accepts the model-zoo / Hugging Face names (``autoencoder.pt``, ``model.pt``) or the GenerativeModels
names (``autoencoder.pth``, ``diffusion_model.pth``); checks each file's md5 against the bundle's
``large_files.yml``; maps GenerativeModels keys to MONAI core; loads every key strictly; then writes the
MONAI-core state dicts with their sha256 into ``model.json``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from models.catalogue.config import AUTOENCODER_FILE, UNET_FILE, ModelConfig, WeightFile, Weights, write_model_config
from models.catalogue.networks import build_autoencoder, build_unet
from models.catalogue.weights import (
    BUNDLE_FILE_NAMES,
    PUBLISHED_MD5,
    file_digest,
    load_state_dict_strict,
    read_state_dict,
    sha256_file,
)
from models.errors import WeightsError


def find_bundle_files(bundle_dir: Path) -> dict[str, Path]:
    """The autoencoder and UNet files of a bundle directory (also looks in its ``models/`` folder)."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise WeightsError(f"{bundle_dir} is not a directory")
    found: dict[str, Path] = {}
    for role, names in BUNDLE_FILE_NAMES.items():
        candidates = [folder / name for folder in (bundle_dir, bundle_dir / "models") for name in names]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            raise WeightsError(f"{bundle_dir} has no {' or '.join(names)} (the bundle's {role} weights)")
        found[role] = existing[0]
    return found


def import_bundle(
    bundle_dir: Path,
    dest_dir: Path,
    config: ModelConfig,
    *,
    trust_unverified: bool = False,
    expected_md5: dict[str, str] = PUBLISHED_MD5,
) -> ModelConfig:
    """Import bundle weights for the architecture ``config`` into ``dest_dir``.

    Args:
        bundle_dir: directory holding the released files.
        dest_dir: the new model directory (must not exist yet).
        config: the architecture the weights belong to (the ``ukb`` preset for the released model).
        trust_unverified: import files whose md5 differs from the published one (e.g. fine-tuned weights
            in the same format); they are recorded as unverified.
        expected_md5: published md5 per role (``autoencoder``, ``unet``).

    Raises:
        WeightsError: a file is missing, its md5 differs (without ``trust_unverified``), or its keys or
            shapes do not fit the network.
    """
    dest_dir = Path(dest_dir)
    if dest_dir.exists():
        raise WeightsError(f"{dest_dir} already exists: remove it or import under another --name")
    files = find_bundle_files(bundle_dir)
    verified: dict[str, bool] = {}
    sources: dict[str, str] = {}
    for role, path in files.items():
        md5 = file_digest(path, "md5")
        verified[role] = md5 == expected_md5[role]
        if not verified[role] and not trust_unverified:
            raise WeightsError(
                f"{path}: md5 {md5} does not match the published {expected_md5[role]} of the released "
                f"{role} weights; if these are your own weights in the same format, pass --trust-unverified"
            )
        sources[role] = f"{path.name} md5 {md5}" + ("" if verified[role] else " (unverified)")

    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}-", dir=dest_dir.parent))
    try:
        entries: dict[str, WeightFile] = {}
        for role, build, file_name in (
            ("autoencoder", build_autoencoder, AUTOENCODER_FILE),
            ("unet", build_unet, UNET_FILE),
        ):
            network = build(config)
            load_state_dict_strict(network, read_state_dict(files[role]), f"{files[role]} ({role})")
            target = staging / file_name
            torch.save(network.state_dict(), target)
            del network
            entries[role] = WeightFile(
                file=file_name, sha256=sha256_file(target), verified=verified[role], source=sources[role]
            )
        registered = config.model_copy(update={"weights": Weights(**entries)})
        write_model_config(staging, registered)
        staging.rename(dest_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return registered
