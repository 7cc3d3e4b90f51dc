"""The workers' Celery app (``celery -A worker.celery_app worker``), configured from the environment."""

from __future__ import annotations

from jobs.queue import create_app
from worker.config import get_settings

app = create_app(get_settings())
