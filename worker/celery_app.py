"""The workers' Celery app (``celery -A worker.celery_app worker``), configured from the environment."""

from __future__ import annotations

from worker.config import get_settings
from worker.queue import create_app

app = create_app(get_settings())
