"""``/v1/models``: the models this server can sample, with their conditioning ranges."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from models.catalogue.registry import describe_model, list_models
from service.api.deps import SettingsDep, Tenant
from service.openapi import ERROR_RESPONSES

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]})
def models(_tenant: Tenant, settings: SettingsDep) -> dict[str, list[dict[str, Any]]]:
    """Models on this server with their conditioning ranges (physical units) and the measures (``qc``) a cohort of
    each may ask for (samseg where the server runs measuring workers)."""
    described = [describe_model(entry) for entry in list_models(check_networks=False)]
    if settings.measure_samseg:
        for model in described:
            model["measures"] = [*model["measures"], "samseg"]
    return {"models": described}
