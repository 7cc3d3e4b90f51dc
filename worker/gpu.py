"""One loaded model per worker process, built lazily on first use (never at import: no CUDA before fork)."""

from __future__ import annotations

from functools import lru_cache

from models.catalogue.registry import resolve_model_dir
from models.dataset.writer import VolumeMeasure
from models.evaluation.volumes import VolumeProbe
from models.inference.pipeline import BrainLDMPipeline
from worker.config import get_settings


@lru_cache(maxsize=2)
def pipeline_for(model: str) -> BrainLDMPipeline:
    """The process's pipeline for a registered model name (weights hash-checked when loaded)."""
    settings = get_settings()
    return BrainLDMPipeline.from_dir(resolve_model_dir(model), device=settings.device, execution=settings.execution())


@lru_cache(maxsize=2)
def probe_for(model: str) -> VolumeMeasure:
    """The process's volume probe of a registered model (CPU; milliseconds per 4 mm image), as a measure."""
    return VolumeProbe.load(resolve_model_dir(model)).measure_volume
