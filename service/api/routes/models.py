"""``/v1/models``: the models this server can sample, with their conditioning ranges."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from models.catalogue.registry import describe_model, list_models
from service.api.deps import Tenant
from service.openapi import ERROR_RESPONSES

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]})
def models(_tenant: Tenant) -> dict[str, list[dict[str, Any]]]:
    """Models on this server with their conditioning ranges (physical units)."""
    return {"models": [describe_model(entry) for entry in list_models(check_networks=False)]}
