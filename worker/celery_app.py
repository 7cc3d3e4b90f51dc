"""The workers' Celery app (``celery -A worker.celery_app worker``), configured from the environment."""

from __future__ import annotations

from celery import signals

from jobs.logs import configure_logging
from jobs.queue import create_app
from worker.config import get_settings

app = create_app(get_settings())
app.conf.include = ["worker.tasks"]  # the tasks register when the worker starts (jobs/ never names them)


@signals.setup_logging.connect
def _logging(**_: object) -> None:
    """The project's log format (``BRAINSYNTH_LOG_FORMAT``) instead of Celery's own handlers."""
    configure_logging(get_settings().log_format)
