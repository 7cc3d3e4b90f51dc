"""API server settings from ``BRAINSYNTH_*`` environment variables: the shared broker and storage settings
(:class:`jobs.settings.JobSettings`) plus API keys and limits (none of the workers' execution settings)."""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import NoDecode

from jobs.settings import JobSettings
from models.cohort.design import DEFAULT_BATCH_SIZE


def parse_api_keys(text: str) -> dict[str, str]:
    """Tenant -> key from JSON (``{"lab-a": "KEY"}``) or lines / commas of ``TENANT=KEY``."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    keys = {}
    for item in text.replace(",", "\n").splitlines():
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        tenant, sep, key = item.partition("=")
        if not sep or not tenant.strip() or not key.strip():
            raise ValueError(f"API key entries must be TENANT=KEY, got {item!r}")
        keys[tenant.strip()] = key.strip()
    return keys


class ServiceSettings(JobSettings):
    """Everything the API server reads at start-up."""

    #: Tenant -> API key (``BRAINSYNTH_API_KEYS``: JSON or ``TENANT=KEY,...``); merged with the file's.
    api_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    api_keys_file: Path | None = None
    #: Most subjects one cohort may ask for (the paper released 100,000); queued in chunks (:mod:`jobs.dispatch`).
    max_subjects_per_cohort: int = Field(100_000, ge=1, le=100_000)
    max_active_cohorts_per_tenant: int = Field(4, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    #: Most rows a ``like`` reference table may have (413 past it; the body limit applies as well).
    max_like_rows: int = Field(5000, ge=10)
    presign_expiry_s: int = Field(300, ge=5, le=3600)
    #: How long the URLs of ``/archive/manifest`` stay valid: a copy of 300,000 objects takes hours (S3 allows 7 days).
    manifest_expiry_s: int = Field(86_400, ge=60, le=604_800)
    page_size_max: int = Field(100, ge=1)
    #: Subjects sampled together by a worker (one UNet batch per task); part of how a subject's bytes are made.
    subjects_per_task: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=16)
    #: A request retries object storage this long, then answers 503 (workers retry ``storage_retry_s``).
    request_storage_retry_s: float = Field(5.0, ge=0.5)
    #: Origins whose browser pages may call the API (``BRAINSYNTH_CORS_ORIGINS``, JSON list); none by default.
    cors_origins: list[str] = Field(default_factory=list)
    #: The deployment runs SAMSEG measuring workers on the ``measure`` queue (``brainsynth up --measure-workers
    #: N``, compose's ``measure-worker``, the k8s measuring Deployment): cohorts may ask for ``qc: samseg``.
    measure_samseg: bool = False
    #: When set, ``GET /metrics`` wants ``Authorization: Bearer <token>`` (its labels are tenant-free either way).
    metrics_token: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _keys_from_text(cls, data: dict) -> dict:
        raw = data.get("api_keys") if isinstance(data, dict) else None
        if isinstance(raw, str):
            data = {**data, "api_keys": parse_api_keys(raw)}
        return data

    @model_validator(mode="after")
    def _keys_from_file(self) -> ServiceSettings:
        if self.api_keys_file is not None:
            if not self.api_keys_file.is_file():
                raise ValueError(f"api_keys_file {self.api_keys_file} does not exist")
            for tenant, key in parse_api_keys(self.api_keys_file.read_text()).items():
                self.api_keys.setdefault(tenant, SecretStr(key))
        for tenant in self.api_keys:
            if not tenant or len(tenant) > 64 or not tenant.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"tenant names are 1-64 letters, digits, - or _: got {tenant!r}")
        return self

    def tenant_for(self, key: str) -> str | None:
        """The tenant whose API key is ``key`` (compared in constant time), else ``None``."""
        found = None
        for tenant, secret in self.api_keys.items():
            if hmac.compare_digest(secret.get_secret_value().encode(), key.encode()):
                found = tenant
        return found
