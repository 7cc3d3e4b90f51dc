"""The API document's texts: the description, error responses per route, request examples, and the assembled
OpenAPI document (with ``POST /v1/cohorts``'s body, which the route reads itself)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.schemas import CohortRequest

#: Documented answers besides the success one (every error body is ``{"detail": ...}``).
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_ERROR, "description": "missing or unknown API key"},
    404: {**_ERROR, "description": "no such cohort for this tenant"},
    503: {**_ERROR, "description": "Redis or object storage is unavailable: retry after Retry-After seconds"},
}
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "`event: status` with a CohortStatus on every change"},
    **ERROR_RESPONSES,
}
CONFLICT = {**_ERROR, "description": "the cohort is not in a state for this (the message says which)"}
ARCHIVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/zip": {}}, "description": "the BIDS dataset, streamed (ZIP64, stored)"},
    **ERROR_RESPONSES,
    409: {**CONFLICT, "description": "the cohort has not finished: watch /events"},
}
#: The archive route also answers ranges (resumable downloads).
RANGED_ARCHIVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ARCHIVE_RESPONSES,
    206: {"content": {"application/zip": {}}, "description": "the requested bytes of the archive (Range)"},
    416: {"description": "the range lies outside the archive (Content-Range: bytes */size)"},
}
CONFLICT_RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 409: CONFLICT}
#: Examples of ``POST /v1/cohorts`` bodies shown in the API document (and sent by its "Try it out").
REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "ranges": {
        "summary": "200 subjects aged 60-80, half female, large ventricles",
        "value": {
            "model": "demo",
            "name": "older adults, large ventricles",
            "n_subjects": 200,
            "seed": 42,
            "covariates": {
                "age": {"min": 60, "max": 80},
                "sex": {"female_fraction": 0.5},
                "ventricular_volume_mm3": {"min": 40000, "max": 60000},
            },
        },
    },
    "values": {
        "summary": "8 subjects with fixed covariates, DPM-Solver++ 15 steps",
        "value": {
            "model": "demo",
            "n_subjects": 8,
            "covariates": {
                "age": {"value": 65},
                "sex": {"value": "F"},
                "ventricular_volume_mm3": {"value": 30000},
                "brain_volume_mm3": {"value": 1500000},
            },
            "sampler": {"name": "dpmpp2m", "steps": 15},
        },
    },
    "subjects": {
        "summary": "an explicit subjects list (a seed regenerates an earlier subject)",
        "value": {
            "model": "demo",
            "subjects": [
                {"age": 70, "sex": "M", "ventricular_volume_mm3": 45000, "brain_volume_mm3": 1400000, "seed": 123},
                {"age": 55, "sex": "F", "ventricular_volume_mm3": 20000, "brain_volume_mm3": 1550000},
            ],
        },
    },
}
API_DESCRIPTION = """Synthetic brain MRI cohorts from the latent diffusion model of Pinaya et al. 2022 (T1w, conditioned
on age in years, sex, ventricular and brain volume in mm3). Research use only.

Authenticate with `Authorization: Bearer <API key>` (the Authorize button). Submit a cohort with
`POST /v1/cohorts`, watch `/v1/cohorts/{id}/events`, list its subjects with previews, download the BIDS
archive. Every error answers `{"detail": ...}`; a 422 lists each invalid field's `loc`."""
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: ERROR_RESPONSES[401],
    413: {**_ERROR, "description": "request body over the server's limit"},
    415: {**_ERROR, "description": "body is not application/json"},
    422: {
        "description": "invalid request: each error's loc names the field",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationErrors"}}},
    },
    429: {**_ERROR, "description": "too many of the tenant's cohorts are queued or running"},
    503: ERROR_RESPONSES[503],
}


#: The error bodies' schemas (every error is ``{"detail": ...}``; a 422's detail lists the invalid fields).
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    },
    "ValidationErrors": {
        "type": "object",
        "properties": {
            "detail": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                        "msg": {"type": "string"},
                        "type": {"type": "string"},
                    },
                    "required": ["loc", "msg"],
                },
            }
        },
        "required": ["detail"],
    },
}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with ``POST /v1/cohorts``'s request body (the route reads the raw body itself,
    to bound its size and parse it strictly, so FastAPI cannot see it); made once, then cached on ``app``."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema = CohortRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["CohortRequest"] = schema
        components.update(ERROR_SCHEMAS)
        document["paths"]["/v1/cohorts"]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/CohortRequest"},
                    "examples": REQUEST_EXAMPLES,
                }
            },
        }
        app.openapi_schema = document
    return app.openapi_schema
