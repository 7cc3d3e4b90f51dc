"""The BrainSynth HTTP API (v1): cohort jobs queued to Celery workers, results in object storage.

:func:`create_app` only assembles: the cohort service (:mod:`service.cohorts`), the readiness prober, the
middleware, the error handlers (:mod:`service.errors`) and one router per resource (:mod:`service.api.routes`).
Run it with ``uvicorn service.app:create_app --factory`` (settings from ``BRAINSYNTH_*`` variables) or
``brainsynth up``. No torch here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from jobs.logs import configure_logging
from service.api.routes import ROUTERS
from service.api.routes.pages import mount_assets
from service.cohorts import CohortService
from service.errors import install_error_handlers
from service.metrics import ApiMetrics
from service.middleware import add_middleware
from service.openapi import API_DESCRIPTION, build_openapi
from service.readiness import Readiness
from service.settings import ServiceSettings


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The API for ``settings`` (default: read from the environment)."""
    settings = settings or ServiceSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_format)
    if not settings.api_keys:
        raise ValueError("no API keys configured: set BRAINSYNTH_API_KEYS (TENANT=KEY,...) or BRAINSYNTH_API_KEYS_FILE")
    readiness = Readiness(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        readiness.start()
        yield
        readiness.stop()

    # docs_url/redoc_url off: the pages router serves both from local assets (the defaults load a CDN)
    app = FastAPI(title="BrainSynth", version="1", description=API_DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # fmt: skip
    app.state.settings = settings
    app.state.cohorts = CohortService(settings)
    app.state.readiness = readiness
    app.state.metrics = ApiMetrics(readiness.redis)  # the prober's client: 0.5 s timeouts, no retries
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    add_middleware(app, settings, app.state.metrics)
    install_error_handlers(app)
    mount_assets(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
