"""Where models live: registered model directories, the shipped zoo, and the built-in presets.

A name resolves, in order, to a directory path given directly, a directory under the user's model root
(``$BRAINSYNTH_MODELS_DIR``, default ``~/.local/share/brainsynth/models``), or a directory shipped in
``models/zoo/``. A preset with no imported or trained weights is listed but cannot be sampled.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.catalogue.config import MODEL_JSON, PROBE_JSON, ModelConfig, read_model_config, write_model_config
from models.catalogue.presets import PRESETS
from models.cohort.design import MAX_GUIDANCE, SAMPLER_TABLE
from models.errors import ModelNotFoundError, RegistrationError

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"


def user_models_dir() -> Path:
    """The directory that ``import-bundle`` and training register models into."""
    configured = os.environ.get("BRAINSYNTH_MODELS_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "share" / "brainsynth" / "models"


def _search_roots() -> list[Path]:
    return [user_models_dir(), ZOO_DIR]


@dataclass(frozen=True)
class ModelEntry:
    """A model known by name: its config and, if it has weights, its directory."""

    name: str
    config: ModelConfig
    directory: Path | None

    @property
    def ready(self) -> bool:
        return self.directory is not None and self.config.is_complete

    @property
    def has_volume_probe(self) -> bool:
        """Whether the model directory ships a volume probe (the fast measure of ``qc: probe``)."""
        return self.directory is not None and (self.directory / PROBE_JSON).is_file()


def list_models(*, check_networks: bool = True) -> list[ModelEntry]:
    """Every registered or shipped model directory, then presets that have none, sorted by name.

    ``check_networks=False`` reads the directories without torch (the API server's view).
    """
    entries: dict[str, ModelEntry] = {}
    for root in _search_roots():
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if (child / MODEL_JSON).is_file() and child.name not in entries:
                entries[child.name] = ModelEntry(
                    child.name, read_model_config(child, check_networks=check_networks), child
                )
    for name, preset in PRESETS.items():
        entries.setdefault(name, ModelEntry(name, preset(), None))
    return [entries[name] for name in sorted(entries)]


def resolve_model_dir(name_or_dir: str | Path) -> Path:
    """The model directory for a name or a path.

    Raises:
        ModelNotFoundError: nothing by that name has weights here; the message says how to get them.
    """
    path = Path(name_or_dir).expanduser()
    if (path / MODEL_JSON).is_file():
        return path
    name = str(name_or_dir)
    for root in _search_roots():
        if (root / name / MODEL_JSON).is_file():
            return root / name
    if name == "ukb":
        raise ModelNotFoundError(
            "model 'ukb' has no weights here: download the released bundle files (autoencoder.pt, model.pt) "
            "and run `brainsynth models import-bundle DIR`"
        )
    if name in PRESETS:
        raise ModelNotFoundError(
            f"model {name!r} is a preset without trained weights in this installation: "
            "pass a model directory with weights (--model DIR)"
        )
    known = ", ".join(entry.name for entry in list_models(check_networks=False))
    raise ModelNotFoundError(f"no model or model directory named {name!r} (known models: {known})")


def _refuse_taken_name(name: str, destination: Path) -> None:
    """Refuse ``name`` when the catalogue already resolves it: a registered model, a shipped one (``demo``) or a
    preset (``ukb``), whose users would otherwise get another model under the name they know."""
    taken = {entry.name: entry for entry in list_models(check_networks=False)}
    if destination.exists() or destination.is_symlink():
        where = f"registered already ({destination})"
    elif name in taken:
        entry = taken[name]
        shipped = entry.directory is not None and entry.directory.parent == ZOO_DIR
        where = "shipped with BrainSynth" if shipped else "a built-in preset"
    else:
        return
    raise RegistrationError(f"a model named {name!r} is {where}: choose another --name")


def register_model(model_dir: Path, name: str | None = None, *, link: bool = False) -> Path:
    """Copy (or link) a complete model directory into the registry under ``name`` (default: its own), with
    its weights hash-checked; a copy takes the registered name in its model.json. Returns the entry."""
    from models.catalogue.weights import verify_sha256

    config = read_model_config(model_dir)
    if not config.is_complete:
        raise RegistrationError(f"{model_dir} has no trained diffusion model yet: finish `brainsynth train` first")
    assert config.weights is not None and config.weights.unet is not None  # is_complete
    for entry in (config.weights.autoencoder, config.weights.unet):
        verify_sha256(Path(model_dir) / entry.file, entry.sha256)
    name = name or config.name
    try:
        renamed = type(config).model_validate({**config.model_dump(), "name": name})
    except ValidationError as err:
        raise RegistrationError(f"--name {name!r}: {err.errors()[0]['msg']} (letters, digits, '.', '_', '-')") from err
    destination = user_models_dir() / name
    _refuse_taken_name(name, destination)
    if link and name != config.name:
        raise RegistrationError(f"--link keeps the model's own name ({config.name!r}): drop --name, or copy it instead")
    destination.parent.mkdir(parents=True, exist_ok=True)
    if link:
        destination.symlink_to(Path(model_dir).resolve(), target_is_directory=True)
        return destination
    staging = destination.with_name(f".{name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    write_model_config(staging, renamed)
    staging.rename(destination)  # appears whole: the API never lists a half-copied model
    return destination


def describe_model(entry: ModelEntry) -> dict[str, Any]:
    """A model as ``GET /v1/models`` and ``brainsynth models --json`` describe it (torch-free): identity,
    grid, conditioning ranges in physical units, and the samplers of :data:`SAMPLER_TABLE` it can run."""
    config = entry.config
    scheduler = config.scheduler
    return {
        "name": entry.name,
        "version": config.version,
        "description": config.description,
        "intended_use": config.intended_use,
        "ready": entry.ready,
        "image_shape": list(config.image_shape),
        "voxel_size_mm": list(config.voxel_size_mm),
        "conditioning": {"sex": {"values": ["F", "M"]}, **config.conditioning.documented()},
        "samplers": {
            name: {"default_steps": info.default_steps}
            for name, info in SAMPLER_TABLE.items()
            if scheduler.prediction_type in info.prediction_types
        },
        "max_steps": scheduler.num_train_timesteps,
        "measures": ["probe"] if entry.has_volume_probe else [],
        # classifier-free guidance: the scale a request gets by default, and the range it may ask for
        "guidance": (
            {"default": config.guidance.default_scale, "min": 0.0, "max": MAX_GUIDANCE}
            if config.guidance is not None
            else {"default": 1.0, "min": 1.0, "max": 1.0}
        ),
    }
