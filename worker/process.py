"""What each worker process holds once, generating or measuring: its settings, object store, cohort state,
subject records and heartbeat (started when Celery reports the worker ready, closed at shutdown). Torch-free."""

from __future__ import annotations

import logging
import os
import socket
from functools import cached_property

from celery import Task, signals

from jobs.records import SubjectRecords
from jobs.state import CohortState, connect
from jobs.storage import ObjectStore
from worker import metrics
from worker.config import ProcessSettings
from worker.liveness import Heartbeat

log = logging.getLogger(__name__)


class WorkerProcess:
    """One worker process's shared resources; ``workers_key`` is the live set its heartbeat beats into."""

    def __init__(self, settings: ProcessSettings, workers_key: str) -> None:
        self.settings = settings
        self.workers_key = workers_key
        signals.worker_ready.connect(self._ready, weak=False)
        signals.worker_shutdown.connect(self._shutdown, weak=False)

    @cached_property
    def store(self) -> ObjectStore:
        store = self.settings.object_store(self.settings.storage_retry_s)
        store.ensure_bucket()
        return store

    @cached_property
    def state(self) -> CohortState:
        return CohortState(connect(self.settings.broker_url))

    @cached_property
    def records(self) -> SubjectRecords:
        """Where this process records each subject's file hashes as it uploads them (:mod:`jobs.records`)."""
        return SubjectRecords(self.state, self.store)

    @cached_property
    def heartbeat(self) -> Heartbeat:
        """This process's heartbeat thread, started on first use (at worker start-up)."""
        name = f"{socket.gethostname()}:{os.getpid()}"
        beat = Heartbeat(self.settings.broker_url, name, self.settings.heartbeat_s, self.settings.heartbeat_file,
                         self.workers_key)  # fmt: skip
        beat.start()
        return beat

    def _ready(self, **_: object) -> None:
        self.heartbeat  # noqa: B018  # starts beating
        if self.settings.metrics_port is not None:
            metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
            log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.settings.metrics_port)

    def _shutdown(self, **_: object) -> None:
        if "heartbeat" in self.__dict__:
            self.heartbeat.close()


def delivery_tag(task: Task) -> str | None:
    """The broker's tag of the message being run (kombu's Redis transport keys its unacked index by it)."""
    properties = getattr(task.request, "properties", None) or {}
    tag = properties.get("delivery_tag")
    return str(tag) if tag else None
