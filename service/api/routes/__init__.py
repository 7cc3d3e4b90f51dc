"""One router per resource; :data:`ROUTERS` is the order the app includes them in."""

from __future__ import annotations

from service.api.routes import cohorts, events, files, health, metrics, models, pages

ROUTERS = (pages.router, health.router, metrics.router, models.router, cohorts.router, events.router, files.router)
