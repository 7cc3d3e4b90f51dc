"""``/metrics``: Prometheus text format (optionally behind ``BRAINSYNTH_METRICS_TOKEN``)."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import Credentials, MetricsDep, SettingsDep
from service.errors import NotAuthenticated

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(settings: SettingsDep, metrics: MetricsDep, credentials: Credentials) -> Response:
    """Prometheus text format: requests by route and status, latency, cohorts by status, subjects by
    outcome, queued and unacknowledged tasks, live workers (no tenant in any label)."""
    wanted = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    if wanted is not None and not (credentials and secrets.compare_digest(credentials.credentials, wanted)):
        raise NotAuthenticated("send Authorization: Bearer <BRAINSYNTH_METRICS_TOKEN>")
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
