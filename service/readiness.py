"""``/readyz`` without work per request: a thread probes Redis, object storage and the workers' heartbeats."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
import urllib3
from minio import Minio

from jobs.state import live_workers
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

#: A worker counts as alive when it beat within this many seconds (it beats every ``heartbeat_s``).
WORKER_ALIVE_S = 10.0


class Readiness:
    """``/readyz`` without work per request: one thread probes Redis, object storage and the workers'
    heartbeats every second, each probe bounded by a 0.5 s timeout and no retries, and requests read the
    latest snapshot. However many probes arrive, they take no thread, connection or pool slot."""

    def __init__(self, settings: ServiceSettings, period: float = 1.0, timeout: float = 0.5) -> None:
        self.period = period
        self.redis = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=timeout, socket_timeout=timeout)
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False, maxsize=1)
        self.s3 = Minio(
            settings.s3_endpoint,
            settings.s3_access_key.get_secret_value(),
            settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region="us-east-1",
            http_client=http,
        )
        self.bucket = settings.s3_bucket
        self._snapshot: tuple[float, dict[str, Any]] = (0.0, {"ready": False, "detail": "not probed yet"})
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="brainsynth-readiness", daemon=True)

    def probe(self) -> dict[str, Any]:
        """Probe every dependency once (at most ~1.5 s in all)."""
        checks: dict[str, Any] = {}
        try:
            self.redis.ping()
            checks["redis"] = True
            alive = live_workers(self.redis, WORKER_ALIVE_S)
            checks["workers"] = alive if alive else f"no worker beat in the last {WORKER_ALIVE_S:.0f} s"
        except redis.RedisError as err:
            checks["redis"] = f"unreachable: {err}"
            checks["workers"] = "unknown (Redis unreachable)"
        try:
            checks["storage"] = bool(self.s3.bucket_exists(self.bucket)) or "bucket missing"
        except Exception as err:  # reported, not raised: readiness lists every failing part
            checks["storage"] = f"unreachable: {type(err).__name__}"
        ready = checks["redis"] is True and checks["storage"] is True and isinstance(checks["workers"], int)
        return {"ready": ready, **checks}

    def snapshot(self) -> dict[str, Any]:
        """The latest probe; not ready if the prober itself has stalled."""
        taken, checks = self._snapshot
        age = time.monotonic() - taken
        if age > 5 * self.period + 2:
            return {**checks, "ready": False, "detail": f"no readiness probe for {age:.0f} s"}
        return checks

    def start(self) -> None:
        self._snapshot = (time.monotonic(), self.probe())
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()

    def _loop(self) -> None:
        while not self._halt.wait(self.period):
            try:
                self._snapshot = (time.monotonic(), self.probe())
            except Exception:  # the prober must not die; a stale snapshot reads as not ready
                log.exception("readiness probe failed")

    def report(self, *, workers_required: bool = True) -> dict[str, Any]:
        """The latest snapshot with ``ready`` decided; without ``workers_required``, Redis and storage suffice
        (an orchestrator that scales workers to zero keeps the API ready)."""
        checks = self.snapshot()
        ready = checks["ready"] or (
            not workers_required and checks.get("redis") is True and checks.get("storage") is True
        )
        return {**checks, "ready": ready}
