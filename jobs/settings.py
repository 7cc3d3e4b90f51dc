"""The broker, object-storage and queue settings that the API and the workers share (``BRAINSYNTH_*``
environment variables, pydantic-settings); :class:`worker.config.WorkerSettings` and
:class:`service.settings.ServiceSettings` extend them with what only their side reads."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.logs import LogFormat
from jobs.storage import ObjectStore


class JobSettings(BaseSettings):
    """Where jobs are queued and stored, and how long a queued task may stay unacknowledged."""

    model_config = SettingsConfigDict(env_prefix="BRAINSYNTH_", extra="ignore")

    broker_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_public_endpoint: str | None = None
    s3_access_key: SecretStr
    s3_secret_key: SecretStr
    s3_bucket: str = "brainsynth"
    s3_secure: bool = False
    #: A killed worker's task is delivered again this long after its last heartbeat; a live worker renews it
    #: for its running task (:mod:`worker.liveness`), so tasks of any length are never run twice at once.
    visibility_timeout_s: int = Field(30, ge=5)
    task_time_limit_s: int = Field(1800, ge=10)
    #: ``json`` (one object per line, for log collectors) or ``text``.
    log_format: LogFormat = "json"

    def object_store(self, retry_seconds: float) -> ObjectStore:
        """The cohort bucket on the configured S3 server, retrying transient errors ``retry_seconds``."""
        return ObjectStore(
            self.s3_endpoint,
            self.s3_access_key.get_secret_value(),
            self.s3_secret_key.get_secret_value(),
            self.s3_bucket,
            secure=self.s3_secure,
            public_endpoint=self.s3_public_endpoint,
            retry_seconds=retry_seconds,
        )
