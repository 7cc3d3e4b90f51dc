"""A worker's heartbeat: liveness for readiness, renewed visibility for its running task, cancel watching.

Celery on Redis redelivers an unacknowledged message once it has been unacknowledged for the visibility
timeout (kombu's ``unacked_index`` sorted set holds each message's delivery time; every worker restores the
entries older than the timeout). One timeout cannot both bring a killed worker's task back fast and never
hand a long legitimate task to a second worker. So the timeout is short (30 s shipped) and a live worker
renews it: a daemon thread in each worker process, every ``interval`` seconds,

* moves its running message's ``unacked_index`` score to now (``ZADD XX``: never re-adds an acked one), so a
  task of any length stays with its worker while the worker lives, and comes back ~30 s after it dies;
* records the worker in ``brainsynth:workers`` (score = time), the readiness probe's notion of a live
  worker (a busy solo worker cannot answer ``celery inspect ping``; its heartbeat thread can);
* polls the running task's cohort and sets a :class:`threading.Event` once it is canceled, failed or
  deleted, which the sampler checks between steps and network blocks (:func:`models.inference.pipeline.stop_points`).

The thread uses its own Redis client with short timeouts and no retries: a Redis outage skips beats and
never blocks the task.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from jobs.state import FINAL, WORKERS_KEY, Status, cohort_key

log = logging.getLogger(__name__)

#: kombu's Redis transport keeps unacknowledged messages' delivery times here (``Channel.unacked_index_key``).
UNACKED_INDEX = "unacked_index"


@dataclass
class RunningTask:
    """The task a worker process is running now."""

    cohort_id: str
    delivery_tag: str | None
    stop: threading.Event = field(default_factory=threading.Event)


class Heartbeat:
    """The worker's beat thread (one per worker process; see the module docstring)."""

    def __init__(
        self,
        broker_url: str,
        worker_name: str,
        interval: float = 1.0,
        beat_file: Path | None = None,
        workers_key: str = WORKERS_KEY,
    ) -> None:
        self.redis = redis.Redis.from_url(broker_url, socket_connect_timeout=1, socket_timeout=1)
        self.worker_name = worker_name
        #: the live set it beats into (measuring workers have their own: they are not generation workers)
        self.workers_key = workers_key
        self.interval = interval
        #: touched on every beat, for a container healthcheck (``python -m worker.liveness FILE``)
        self.beat_file = beat_file
        self._lock = threading.Lock()
        self._running: RunningTask | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="brainsynth-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def close(self) -> None:
        """Stop beating and leave the live set (a clean shutdown)."""
        self._halt.set()
        self._thread.join(5)
        with contextlib.suppress(redis.RedisError):
            self.redis.zrem(self.workers_key, self.worker_name)

    def begin(self, cohort_id: str, delivery_tag: str | None) -> threading.Event:
        """Watch a task from now; returns the event set when its cohort must stop."""
        task = RunningTask(cohort_id, delivery_tag)
        with self._lock:
            self._running = task
        self.beat()
        return task.stop

    def end(self) -> None:
        with self._lock:
            self._running = None

    def beat(self) -> None:
        """One beat: liveness, the running message's visibility, its cohort's status."""
        with self._lock:
            task = self._running
        now = time.time()
        if self.beat_file is not None:
            self.beat_file.touch()
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(self.workers_key, {self.worker_name: now})
                pipe.zremrangebyscore(self.workers_key, "-inf", now - 24 * 3600)
                if task is not None:
                    if task.delivery_tag:
                        pipe.zadd(UNACKED_INDEX, {task.delivery_tag: now}, xx=True)
                    pipe.hget(cohort_key(task.cohort_id), "status")
                replies = pipe.execute()
        except redis.RedisError as err:
            log.debug("heartbeat skipped: %s", err)
            return
        if task is not None:
            status = replies[-1]
            if status is None or Status(status.decode()) in FINAL:
                if not task.stop.is_set():
                    log.info("cohort %s is %s: stopping its task", task.cohort_id, status and status.decode())
                task.stop.set()

    def _loop(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.beat()
            except Exception:  # the beat must never die: log and go on
                log.exception("heartbeat failed")


def main(argv: list[str] | None = None) -> int:
    """Container healthcheck: exit 0 if the worker's beat file was touched in the last 15 s (a busy worker
    beats too; ``celery inspect ping`` cannot answer while a solo worker samples)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m worker.liveness BEAT_FILE", file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        print(f"{path} missing: the worker has not started beating", file=sys.stderr)
        return 1
    if age > 15:
        print(f"last heartbeat {age:.0f} s ago", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
