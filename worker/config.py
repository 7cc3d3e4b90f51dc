"""Worker settings, read once from ``BRAINSYNTH_*`` environment variables (pydantic-settings): the shared
broker and storage settings (:class:`jobs.settings.JobSettings`) plus how this worker runs. Torch-free: the
measuring workers (SAMSEG's environment) read theirs here too."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator

from jobs.settings import JobSettings
from models.inference.execution import Execution, Precision


class ProcessSettings(JobSettings):
    """What every worker process reads, generating or measuring: heartbeat, storage retries, poison limit, metrics."""

    #: How often the heartbeat renews the running task's visibility (a third of the timeout at most).
    heartbeat_s: float = Field(1.0, gt=0, le=10)
    #: Touched on every heartbeat, for a container healthcheck (``python -m worker.liveness FILE``).
    heartbeat_file: Path | None = None
    #: How long a worker retries object storage (backoff to 2 s) before it fails the cohort, naming the outage.
    storage_retry_s: float = Field(120.0, ge=1)
    #: Deliveries of one subject before it is failed for good (a poison task ends, it does not loop).
    max_attempts: int = Field(3, ge=1)
    #: Prometheus metrics of this worker on http://METRICS_HOST:METRICS_PORT/metrics (tenant-free labels);
    #: off unless a port is set. Loopback by default; 0.0.0.0 in a container that a scraper reaches.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _beats_within_the_timeout(self) -> ProcessSettings:
        if self.heartbeat_s * 3 > self.visibility_timeout_s:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be at most a third of visibility_timeout_s "
                f"({self.visibility_timeout_s}): a live worker's task would be delivered again"
            )
        return self


class WorkerSettings(ProcessSettings):
    """The shared settings plus the execution limits of a GPU (or CPU) worker."""

    device: str | None = Field(None, description="cpu, cuda or cuda:N; default: cuda if available")
    precision: Precision | None = Field(None, description="autocast UNet and decoder; default float32")
    channels_last: bool = Field(False, description="channels-last (NDHWC) tensors for the UNet and decoder")
    compile: bool = Field(False, description="torch.compile the UNet and decoder (compiles per batch size)")
    decode_slab: int | None = Field(None, ge=1, description="decode slab by slab, N rows each; default whole volume")
    decode_offload: bool = Field(False, description="with decode_slab: keep full-size decoder tensors in host memory")
    #: Subjects encoded and uploaded at once while sampling goes on (gzip of a full-size subject: ~0.7 s a core).
    writer_threads: int = Field(2, ge=1, le=32)

    @model_validator(mode="after")
    def _valid_execution(self) -> WorkerSettings:
        self.execution()
        return self

    def execution(self) -> Execution:
        """How this worker runs the networks (``BRAINSYNTH_PRECISION``, ``_CHANNELS_LAST``, ``_COMPILE``,
        ``_DECODE_SLAB``, ``_DECODE_OFFLOAD``)."""
        return Execution(self.precision, self.channels_last, self.compile, self.decode_slab, self.decode_offload)


class MeasureSettings(ProcessSettings):
    """A measuring worker's settings: the shared ones plus how it runs SAMSEG."""

    #: Threads of one SAMSEG run (``--threads``); one run at a time per worker process.
    samseg_threads: int = Field(2, ge=1, le=64)
    #: ``run_samseg`` to run; default: the one beside this Python (the measuring environment's).
    samseg_executable: str | None = None


@lru_cache
def get_settings() -> WorkerSettings:
    return WorkerSettings()  # type: ignore[call-arg]  # required fields come from the environment


@lru_cache
def get_measure_settings() -> MeasureSettings:
    return MeasureSettings()  # type: ignore[call-arg]
