"""The Celery application's configuration, built from settings (the API builds a client with it; no torch).

Redelivery that works on Redis (measured; README "How jobs survive failures"): late acks, requeue when a
worker dies, prefetch 1, and kombu's unacked-restore sweep every 2 s, so a task of a killed worker comes back
after the visibility timeout (30 s) instead of after ~100 s. A live worker's heartbeat renews its running message's
delivery time (``worker.liveness``), so a task longer than the timeout is never delivered twice at once.
"""

from __future__ import annotations

from celery import Celery

from jobs.contract import MEASURE_QUEUE, MEASURE_SUBJECT
from jobs.settings import JobSettings


def create_app(settings: JobSettings) -> Celery:
    """The Celery app for ``settings`` (the API builds its own from its settings to send tasks by name; the
    workers' app, :mod:`worker.celery_app`, adds their task module). The visibility timeout is a transport
    option of kombu's Redis transport (there is no top-level Celery setting of that name)."""
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
    }
    app = Celery("brainsynth", broker=settings.broker_url, backend=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(settings.task_time_limit_s - 30, 5),
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        worker_hijack_root_logger=False,
        result_backend_always_retry=True,  # ride out a Redis restart instead of failing the task
        result_backend_max_retries=20,
        task_routes={MEASURE_SUBJECT: {"queue": MEASURE_QUEUE}},  # served by the measuring workers alone
    )
    return app
