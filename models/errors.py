"""Domain exceptions of the model layer; the CLI and the service map them to messages and status codes."""

from __future__ import annotations


class BrainSynthError(Exception):
    """Base class: an error whose message tells the user what went wrong and what to do."""


class ConditioningError(BrainSynthError, ValueError):
    """A conditioning value is invalid; ``field`` names the offending covariate."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelConfigError(BrainSynthError):
    """A model directory or its ``model.json`` is missing or invalid."""


class ModelNotFoundError(BrainSynthError):
    """No registered model or model directory has the requested name."""


class RegistrationError(BrainSynthError):
    """A model directory cannot be registered: incomplete, or under a name that is taken or invalid."""


class WeightsError(BrainSynthError):
    """A weight file is missing, fails its hash check, or does not fit the network."""


class SamplingError(BrainSynthError, ValueError):
    """Sampler arguments are invalid (unknown sampler, step count, batch size, device); ``field`` names the
    request field (``sampler.name``, ``sampler.steps``) when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class GenerationStopped(BrainSynthError):
    """Sampling was stopped on request (the cohort was canceled, failed or deleted) before it finished."""


class OutputExistsError(BrainSynthError, FileExistsError):
    """The output folder exists and is not empty (nothing is ever written over)."""
