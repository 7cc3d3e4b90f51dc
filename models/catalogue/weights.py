"""Weight files: hashes, the released bundle's published md5s, and GenerativeModels key mapping.

The released checkpoints of Pinaya et al. 2022 are state dicts of the older MONAI GenerativeModels
classes. MONAI core (>= 1.4) renamed a few keys; ``AutoencoderKL.load_old_state_dict`` and
``DiffusionModelUNet.load_old_state_dict`` do the renaming but fill any key they cannot map with the new
network's random initial values and ignore keys left over. :func:`map_generative_keys` applies the same
renames explicitly and :func:`load_state_dict_strict` refuses anything that does not map one-to-one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from models.errors import WeightsError

#: md5 of the released files as published in the bundle's ``large_files.yml`` (both naming generations).
PUBLISHED_MD5: dict[str, str] = {
    "autoencoder": "329e97b3085643ff235f11f049856242",
    "unet": "21c3047556fb671caf0556f1cce6ef22",
}

#: File names of the released bundle: model-zoo / Hugging Face names first, GenerativeModels names second.
BUNDLE_FILE_NAMES: dict[str, tuple[str, ...]] = {
    "autoencoder": ("autoencoder.pt", "autoencoder.pth"),
    "unet": ("model.pt", "diffusion_model.pth"),
}

_CHUNK = 8 * 1024 * 1024


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (``algorithm`` is any :mod:`hashlib` name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


# Each rule maps a MONAI-core key fragment to its GenerativeModels spelling.
_RENAMES: tuple[tuple[str, str], ...] = (
    (".attn1.out_proj.", ".attn1.to_out.0."),  # SpatialTransformer self-attention output
    (".attn2.out_proj.", ".attn2.to_out.0."),  # SpatialTransformer cross-attention output
    (".postconv.", ".conv."),  # autoencoder decoder upsampling conv
    (".attn.out_proj.", ".proj_attn."),  # plain attention blocks (models without cross-attention)
    (".attn.to_", ".to_"),
)


def _old_name(new_key: str) -> str:
    old = new_key
    for new, legacy in _RENAMES:
        old = old.replace(new, legacy)
    return old


def map_generative_keys(old_state: dict[str, torch.Tensor], new_keys: list[str]) -> dict[str, torch.Tensor]:
    """Rename a GenerativeModels state dict to the MONAI-core keys ``new_keys``.

    A key already in MONAI-core spelling is taken as is, so current-format state dicts pass through.

    Raises:
        WeightsError: some network key has no source, or some source key is left unused.
    """
    mapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for key in new_keys:
        for candidate in (key, _old_name(key)):
            if candidate in old_state:
                mapped[key] = old_state[candidate]
                used.add(candidate)
                break
        else:
            missing.append(key)
    unused = sorted(set(old_state) - used)
    if missing or unused:
        raise WeightsError(
            f"state dict does not fit the network: {len(missing)} network keys without weights "
            f"(first: {missing[:3]}), {len(unused)} unused keys in the file (first: {unused[:3]})"
        )
    return mapped


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` (MONAI-core or GenerativeModels keys) into ``module``, every key and shape checked."""
    mapped = map_generative_keys(state, list(module.state_dict().keys()))
    try:
        module.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{what}: {err}") from err


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a plain tensor state dict on the CPU (``weights_only``: no arbitrary pickles)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign pickles
        raise WeightsError(f"{path}: not a readable PyTorch state dict ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return state


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a weight file whose sha256 differs from the one recorded in ``model.json``."""
    if not Path(path).is_file():
        raise WeightsError(f"{path} is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"{path}: sha256 {actual} does not match {expected} recorded in model.json; "
            "the file was changed or truncated: restore it or re-import the model"
        )
