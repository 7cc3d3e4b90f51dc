"""The API's Prometheus metrics (``GET /metrics``) and its request log, from one ASGI middleware.

Requests: a counter by method, route template and status code, and a latency histogram by method and route
(time to the response's first byte; an event stream's lifetime is not latency). Routes are templates
(``/v1/cohorts/{cohort_id}``), never paths: no cohort id, tenant or token reaches a label or a log line.
The job store's state is read from Redis at scrape time (:func:`jobs.state.operational_counts`): cohorts by
status, subjects by outcome, tasks queued and unacknowledged, live workers. Workers export their own
(:mod:`worker.metrics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.state import MEASURE_WORKERS_KEY, live_workers, operational_counts

log = logging.getLogger("brainsynth.access")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WORKER_ALIVE_S = 10.0


class JobStoreCollector(Collector):
    """Tenant-free counts read from Redis at each scrape; ``brainsynth_job_store_up`` 0 when Redis is down."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("brainsynth_job_store_up", "Whether Redis answered this scrape")
        try:
            counts = operational_counts(self.client)
            workers = live_workers(self.client, WORKER_ALIVE_S)
            measuring = live_workers(self.client, WORKER_ALIVE_S, MEASURE_WORKERS_KEY)
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        cohorts = GaugeMetricFamily("brainsynth_cohorts", "Cohorts by status", labels=["status"])
        for status, n in counts["cohorts"].items():
            cohorts.add_metric([status], n)
        yield cohorts
        subjects = CounterMetricFamily("brainsynth_subjects", "Subjects settled by outcome", labels=["outcome"])
        for outcome, n in counts["subjects"].items():
            subjects.add_metric([outcome], n)
        yield subjects
        tasks = GaugeMetricFamily(
            "brainsynth_queue_tasks", "Tasks by queue state (measure_queued: the SAMSEG queue)", labels=["state"]
        )
        for state, n in counts["tasks"].items():
            tasks.add_metric([state], n)
        yield tasks
        alive = GaugeMetricFamily("brainsynth_workers_alive", f"Workers that beat in the last {WORKER_ALIVE_S:.0f} s")
        alive.add_metric([], workers)
        yield alive
        alive = GaugeMetricFamily(
            "brainsynth_measure_workers_alive", f"Measuring workers that beat in the last {WORKER_ALIVE_S:.0f} s"
        )
        alive.add_metric([], measuring)
        yield alive


class ApiMetrics:
    """One registry per app: request metrics plus the job store's counts."""

    def __init__(self, client: redis.Redis) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "brainsynth_http_requests", "HTTP requests by route and status", ["method", "route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "brainsynth_http_request_duration_seconds", "Time to the response's first byte", ["method", "route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(JobStoreCollector(client))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_of(scope: Scope) -> str:
    """The matched route's template (``/v1/cohorts/{cohort_id}``), a mount's prefix, or ``unmatched``."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"


class RequestMetricsAndLog:
    """ASGI middleware: counts and times every HTTP request and logs one line for it (route template,
    status, seconds, tenant name when authenticated; never the query string, which may hold a link token)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, int] = {}

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start" and "status" not in seen:
                seen["status"] = message["status"]
                self._record(scope, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        except Exception:
            if "status" not in seen:
                self._record(scope, 500, time.perf_counter() - started)
            raise

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        method, route = scope["method"], route_of(scope)
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(seconds)
        if route in ("/metrics", "/healthz", "/readyz"):
            return  # probes and scrapes every few seconds would drown the log
        params = scope.get("path_params") or {}
        log.info(
            "%s %s %d", method, route, status,
            extra={"method": method, "route": route, "status": status, "seconds": round(seconds, 4),
                   "tenant": scope.get("brainsynth.tenant"), "cohort_id": params.get("cohort_id"),
                   "subject_id": params.get("participant_id")},
        )  # fmt: skip
