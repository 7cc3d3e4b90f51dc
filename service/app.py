"""The BrainSynth HTTP API (v1): cohort jobs queued to Celery workers, results in object storage.

No torch here: requests are validated with the model layer's torch-free design code and model.json files,
subjects are queued by task name, and results are read from object storage. Run it with
``uvicorn service.app:create_app --factory`` (settings from ``BRAINSYNTH_*`` variables) or ``brainsynth up``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import fastapi_offline
import redis
import urllib3
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from minio import Minio
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.contract import GENERATE_SUBJECTS, SubjectBatch, SubjectJob
from jobs.logs import configure_logging
from jobs.queue import create_app as create_celery
from jobs.state import (
    FINAL,
    CohortRecord,
    CohortState,
    Status,
    StoredCohort,
    bids_prefix,
    cohort_json_key,
    connect,
    link_secret,
    live_workers,
    preview_key,
    recover_cohort,
    register_cohort,
    stored_subjects,
    write_final_state,
)
from jobs.storage import StorageError, cohort_prefix
from models.catalogue.registry import ModelEntry, list_models
from models.cohort.conditioning import Covariates, normalise
from models.cohort.design import (
    DEFAULT_STEPS,
    SAMPLERS,
    CohortDesign,
    Span,
    SubjectSpec,
    check_sampler,
    design_subjects,
    participant_id,
    subject_seed,
)
from models.dataset.bids import MANIFEST, sidecar_path, t1w_path
from models.errors import BrainSynthError, ConditioningError, SamplingError
from service.archive import stream_zip
from service.links import LINK_TOKEN_TTL_S, LinkSigner
from service.metrics import ApiMetrics, RequestMetricsAndLog
from service.schemas import (
    CohortPage,
    CohortRequest,
    CohortStatus,
    LinkTokenOut,
    Progress,
    SubjectOut,
    SubjectPage,
    duplicate_subject,
)
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

#: The web page (plain HTML, CSS and JS; no build step) and the API document's Swagger UI and ReDoc assets,
#: all served from the package: the page and /docs work on a network without internet.
WEB_DIR = Path(__file__).resolve().parent / "web"
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
#: The page may load its own scripts, styles and images and call its own origin; nothing else.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: Swagger UI and ReDoc set inline styles and draw with data: and blob: URLs (no inline scripts).
DOCS_CSP = (
    "default-src 'none'; script-src 'self' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; worker-src blob:; font-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
)
PARTICIPANT_ID = re.compile(r"sub-[0-9]{6}")


def _invalid(loc: list[str | int], message: str) -> HTTPException:
    """A 422 in FastAPI's own shape, naming the field."""
    return HTTPException(422, detail=[{"loc": loc, "msg": message, "type": "value_error"}])


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


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


class Service:
    """The API's connections and the logic behind each route (routes stay thin)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.store = settings.object_store(settings.request_storage_retry_s)
        self.store.ensure_bucket()
        # A few retries only: a request waits seconds, not half a minute, then answers 503.
        self.state = CohortState(connect(settings.broker_url, retries=3))
        self.celery = create_celery(settings)
        self.readiness = Readiness(settings)
        self.links = LinkSigner(lambda: link_secret(self.state.redis))

    # -- models -----------------------------------------------------------------------------------
    def ready_model(self, name: str) -> ModelEntry:
        entries = {entry.name: entry for entry in list_models(check_networks=False)}
        entry = entries.get(name)
        if entry is None or not entry.ready:
            ready = ", ".join(sorted(n for n, e in entries.items() if e.ready)) or "none"
            reason = "has no weights on this server" if entry else "is not known"
            raise _invalid(["body", "model"], f"model {name!r} {reason}; models ready here: {ready}")
        return entry

    # -- submission -------------------------------------------------------------------------------
    def design(self, request: CohortRequest) -> tuple[dict[str, Any], list[SubjectSpec], ModelEntry]:
        """Validate everything checkable and decide every subject; returns the completed request."""
        limit = self.settings.max_subjects_per_cohort
        count = len(request.subjects) if request.subjects is not None else int(request.n_subjects or 0)
        if count > limit:
            field = "subjects" if request.subjects is not None else "n_subjects"
            raise _invalid(["body", field], f"must be between 1 and {limit} subjects on this server, got {count}")
        entry = self.ready_model(request.model)
        config = entry.config
        steps = request.sampler.steps or DEFAULT_STEPS[request.sampler.name]
        try:
            check_sampler(request.sampler.name, steps, config.scheduler.num_train_timesteps)
        except SamplingError as err:
            raise _invalid(["body", *err.field.split(".")], str(err)) from err
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        ranges = config.conditioning
        if request.subjects is not None:
            specs = []
            for index, subject in enumerate(request.subjects):
                covariates = Covariates(
                    subject.sex, subject.age, subject.ventricular_volume_mm3, subject.brain_volume_mm3
                )
                try:
                    normalise(covariates, ranges, extrapolate=request.extrapolate)
                except ConditioningError as err:
                    raise _invalid(["body", "subjects", index, err.field], str(err)) from err
                own_seed = subject.seed if subject.seed is not None else subject_seed(seed, index)
                specs.append(SubjectSpec(participant_id(index), covariates, own_seed))
        else:
            given = request.covariates
            spans = {}
            for field in ("age", "ventricular_volume_mm3", "brain_volume_mm3"):
                spec = getattr(given, field) if given else None
                spans[field] = Span(*spec.bounds) if spec else None
            fraction = given.sex.fraction if given and given.sex else 0.5
            design = CohortDesign(count, seed, fraction, spans["age"], spans["ventricular_volume_mm3"],
                                  spans["brain_volume_mm3"])  # fmt: skip
            try:
                specs = design_subjects(design, ranges, extrapolate=request.extrapolate)
            except ConditioningError as err:
                where = ["body", "covariates", err.field] if err.field in spans else ["body", err.field]
                raise _invalid(where, str(err)) from err
        completed = request.model_dump(mode="json")
        completed["seed"] = seed
        completed["sampler"]["steps"] = steps
        return completed, specs, entry

    def submit(self, tenant: str, raw: bytes, idempotency_key: str | None) -> tuple[CohortRecord, bool]:
        """Validate, register and queue a cohort; returns (record, created now)."""
        try:  # UTF-8 JSON parsed by pydantic-core: bad bytes, deep nesting and huge numbers are 422, not 500
            request = CohortRequest.model_validate_json(raw)
        except ValidationError as err:
            errors = json.loads(err.json(include_url=False, include_context=False, include_input=False))
            raise HTTPException(422, detail=[{**e, "loc": ["body", *e["loc"]]} for e in errors]) from err
        if request.subjects is not None and (twins := duplicate_subject(request.subjects)) is not None:
            earlier, later = twins
            raise _invalid(
                ["body", "subjects", later, "seed"],
                f"subject {later} repeats subject {earlier} (same seed and covariates: the same brain twice); "
                "change or drop its seed",
            )
        completed, specs, entry = self.design(request)
        cohort_id = uuid.uuid4().hex
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255 or not idempotency_key.isprintable():
                raise _invalid(["header", "Idempotency-Key"], "must be 1-255 printable characters")
            body_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
            binding = self.state.claim_idempotency_key(tenant, idempotency_key, body_hash, cohort_id)
            if binding["cohort_id"] != cohort_id:
                if binding["hash"] != body_hash:
                    raise _invalid(
                        ["header", "Idempotency-Key"],
                        "this key was used with a different request body: use a new key for a new request",
                    )
                return self._await_record(tenant, binding["cohort_id"]), False
        reserved = False
        try:
            reserved = self.state.reserve_active(tenant, cohort_id, self.settings.max_active_cohorts_per_tenant)
            if not reserved:
                raise HTTPException(
                    429,
                    detail=f"tenant {tenant} has {self.settings.max_active_cohorts_per_tenant} cohorts queued or "
                    "running (the limit): wait for one to finish or cancel one",
                    headers={"Retry-After": "30"},
                )
            shared = {"tenant": tenant, "cohort_id": cohort_id, "model": entry.name,
                      "sampler": completed["sampler"]["name"], "steps": completed["sampler"]["steps"],
                      "dtype": completed["dtype"], "extrapolate": completed["extrapolate"]}  # fmt: skip
            jobs = [SubjectJob.from_spec(spec, **shared) for spec in specs]
            stored = StoredCohort(
                id=cohort_id,
                tenant=tenant,
                model=entry.name,
                created_at=time.time(),
                request=completed,
                subjects=jobs,
                subjects_per_task=self.settings.subjects_per_task,
            )
            record = register_cohort(self.state, self.store, stored, idempotency_key)
        except BaseException:
            if reserved:
                self.state.release_active(tenant, cohort_id)
            if idempotency_key is not None:
                self.state.release_idempotency_key(tenant, idempotency_key, cohort_id)
            raise
        self.enqueue(stored)
        return record, True

    def enqueue(self, stored: StoredCohort, done: set[str] | None = None) -> None:
        """One task per batch of the cohort (``subjects_per_task`` consecutive subjects, sampled together by
        a worker); with ``done``, only the batches that still have a subject to store."""
        for subjects in stored.batches():
            if done is None or any(job.participant_id not in done for job in subjects):
                self.celery.send_task(GENERATE_SUBJECTS, args=[SubjectBatch(subjects=subjects).model_dump()])

    def _await_record(self, tenant: str, cohort_id: str, timeout: float = 5.0) -> CohortRecord:
        """The cohort a concurrent request with the same Idempotency-Key is creating."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.state.get(cohort_id)
            if record is not None:
                return record
            if time.monotonic() > deadline:
                raise HTTPException(409, "a request with this Idempotency-Key is still being processed: retry")
            time.sleep(0.1)

    # -- reading ----------------------------------------------------------------------------------
    def load(self, tenant: str, cohort_id: str) -> CohortRecord:
        """The caller's cohort (404 for another tenant's); rebuilt from object storage if Redis lost it."""
        if not cohort_id.isalnum() or len(cohort_id) > 64:
            raise HTTPException(404, f"cohort {cohort_id} not found")
        record = self.state.get(cohort_id)
        if record is not None and record.tenant != tenant:
            # the same storage lookup a miss makes, so timing cannot tell another tenant's id from a random one
            self.store.get_bytes_if_present(cohort_json_key(tenant, cohort_id))
            raise HTTPException(404, f"cohort {cohort_id} not found")
        if record is None:
            record = recover_cohort(self.state, self.store, tenant, cohort_id)
            if record is not None and record.status not in FINAL:
                stored = self.stored(record)
                self.enqueue(stored, done=stored_subjects(self.store, stored))
                log.warning("cohort %s was rebuilt from object storage and its missing subjects queued", cohort_id)
        if record is None or record.tenant != tenant:
            raise HTTPException(404, f"cohort {cohort_id} not found")
        return record

    def stored(self, record: CohortRecord) -> StoredCohort:
        """The cohort's request as stored; 404 when it is gone (deleted while this request was answered)."""
        raw = self.store.get_bytes_if_present(cohort_json_key(record.tenant, record.id))
        if raw is None:
            raise HTTPException(404, f"cohort {record.id} not found")
        return StoredCohort.model_validate_json(raw)

    def status(self, record: CohortRecord) -> CohortStatus:
        done, _ = self.state.progress(record.id)
        base = f"/v1/cohorts/{record.id}"
        return CohortStatus(
            id=record.id,
            status=record.status.value,
            progress=Progress(done=done, total=record.total),
            created_at=_iso(record.created_at),
            updated_at=_iso(record.updated_at),
            request=record.request,
            error=record.error,
            links={
                "self": base,
                "events": f"{base}/events",
                "subjects": f"{base}/subjects",
                "archive": f"{base}/archive",
            },
        )

    def subjects(self, record: CohortRecord) -> SubjectPage:
        stored = self.stored(record)
        done = self.state.done(record.id)
        prefix = bids_prefix(record.tenant, record.id)
        expiry = self.settings.presign_expiry_s
        out = []
        for job in stored.subjects:
            is_done = job.participant_id in done
            status = "stored" if is_done else ("not_run" if record.status in FINAL else "pending")
            out.append(
                SubjectOut(
                    **job.model_dump(include=set(SubjectOut.model_fields)),
                    status=status,
                    url=self.store.presigned_get(prefix + t1w_path(job.participant_id), expiry) if is_done else None,
                    sidecar_url=(
                        self.store.presigned_get(prefix + sidecar_path(job.participant_id), expiry) if is_done else None
                    ),
                    expires_in_s=expiry if is_done else None,
                )
            )
        return SubjectPage(cohort_id=record.id, subjects=out)

    def archive_entries(self, record: CohortRecord) -> list[tuple[str, int, Iterator[bytes]]]:
        prefix = bids_prefix(record.tenant, record.id)
        objects = self.store.list_objects(prefix)
        if record.status not in FINAL or (prefix + MANIFEST) not in {key for key, _ in objects}:
            raise HTTPException(
                409,
                f"cohort {record.id} is {record.status.value}: its archive is ready once it has finished "
                "(watch /events or poll the status)",
                headers={"Retry-After": "5"},
            )
        objects.sort(key=lambda item: item[0].endswith(MANIFEST))  # the manifest last, as in storage
        root = f"cohort-{record.id}/"
        return [(root + key[len(prefix) :], size, self.store.stream(key)) for key, size in objects]

    def preview(self, record: CohortRecord, participant: str, kind: str, if_none_match: str | None) -> Response:
        """A stored subject's PNG preview (written by the worker before the subject's sidecar)."""
        png = None
        if PARTICIPANT_ID.fullmatch(participant):
            png = self.store.get_bytes_if_present(preview_key(record.tenant, record.id, participant, kind))
        if png is None:
            raise HTTPException(404, f"no preview of {participant} in cohort {record.id}: it is not stored (yet)")
        etag = f'"{hashlib.sha256(png).hexdigest()[:32]}"'
        # a stored subject never changes (ids are never reused): cache it in the browser, not in shared caches
        headers = {"ETag": etag, "Cache-Control": "private, max-age=86400, immutable"}
        if if_none_match == etag:
            return Response(status_code=304, headers=headers)
        return Response(png, media_type="image/png", headers=headers)

    def cancel(self, record: CohortRecord) -> CohortRecord:
        if record.status in (Status.SUCCEEDED, Status.FAILED):
            raise HTTPException(409, f"cohort {record.id} has already {record.status.value}: nothing to cancel")
        if self.state.transition(record, Status.CANCELED, allowed_from={Status.QUEUED, Status.RUNNING}):
            write_final_state(self.store, self.state.get(record.id) or record)
        return self.state.get(record.id) or record

    def delete(self, record: CohortRecord) -> None:
        if record.status not in FINAL:
            raise HTTPException(409, f"cohort {record.id} is {record.status.value}: cancel it before deleting it")
        # The record goes first: a task still holding one of its subjects stops at its next heartbeat and
        # removes whatever it wrote after this (worker.tasks); queued tasks find no cohort and do not run.
        self.state.delete(record)
        self.store.delete_prefix(cohort_prefix(record.tenant, record.id))


def _model_summary(entry: ModelEntry) -> dict[str, Any]:
    config = entry.config
    return {
        "name": entry.name,
        "version": config.version,
        "description": config.description,
        "intended_use": config.intended_use,
        "ready": entry.ready,
        "image_shape": list(config.image_shape),
        "voxel_size_mm": list(config.voxel_size_mm),
        "conditioning": {"sex": {"values": ["F", "M"]}, **config.conditioning.documented()},
        "samplers": {name: {"default_steps": DEFAULT_STEPS[name]} for name in SAMPLERS},
        "max_steps": config.scheduler.num_train_timesteps,
    }


def _page_token(created_at: float, cohort_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}:{cohort_id}".encode()).decode()


def _read_page_token(token: str) -> float:
    try:
        value = float(base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)[0])
    except (ValueError, UnicodeDecodeError, binascii.Error) as err:
        raise _invalid(["query", "page_token"], "not a page token from this API") from err
    if not math.isfinite(value):
        raise _invalid(["query", "page_token"], "not a page token from this API")
    return value


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body is over {limit} bytes")
    return bytes(body)


_bearer = HTTPBearer(auto_error=False)


def _tenant_of(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The tenant whose API key the caller sent (401 otherwise)."""
    settings: ServiceSettings = request.app.state.service.settings
    tenant = settings.tenant_for(credentials.credentials) if credentials else None
    if tenant is None:
        raise HTTPException(
            401, "missing or unknown API key: send Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
        )
    request.scope["brainsynth.tenant"] = tenant  # for the request log line (the name, never the key)
    return tenant


Tenant = Annotated[str, Depends(_tenant_of)]


def _reader_of(
    cohort_id: str,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[
        str | None,
        Query(
            max_length=1024,
            description="a link token from POST /v1/cohorts/{cohort_id}/link-token, for "
            "clients that cannot send headers (EventSource, <img>, download links)",
        ),
    ] = None,
) -> str:
    """The tenant of the API key sent, or of a valid link token for this cohort (401 otherwise)."""
    service: Service = request.app.state.service
    tenant = service.settings.tenant_for(credentials.credentials) if credentials else None
    if tenant is None and token:
        tenant = service.links.check(token, cohort_id)
    if tenant is None:
        raise HTTPException(
            401, "missing or unknown API key or link token: send Authorization: Bearer <key>, or ?token= from "
            f"POST /v1/cohorts/{cohort_id}/link-token (valid {LINK_TOKEN_TTL_S} s)", {"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    request.scope["brainsynth.tenant"] = tenant
    return tenant


#: A cohort's read-only streams (events, previews, archive): API key, or a link token for that cohort.
Reader = Annotated[str, Depends(_reader_of)]

#: Sent with every response: the API serves JSON and downloads, never pages to frame or scripts to run.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` (and ``Cache-Control: no-store`` where a route set
    none) to every HTTP response, streaming ones included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: Documented answers besides the success one (every error body is ``{"detail": ...}``).
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_ERROR, "description": "missing or unknown API key"},
    404: {**_ERROR, "description": "no such cohort for this tenant"},
    503: {**_ERROR, "description": "Redis or object storage is unavailable: retry after Retry-After seconds"},
}
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "`event: status` with a CohortStatus on every change"},
    **ERROR_RESPONSES,
}
CONFLICT = {**_ERROR, "description": "the cohort is not in a state for this (the message says which)"}
ARCHIVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/zip": {}}, "description": "the BIDS dataset, streamed (ZIP64, stored)"},
    **ERROR_RESPONSES,
    409: {**CONFLICT, "description": "the cohort has not finished: watch /events"},
}
CONFLICT_RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 409: CONFLICT}
PREVIEW_ROUTES = (
    ("views", "preview.png", "axial, coronal and sagittal mid-slices side by side"),
    ("axial", "preview-axial.png", "the mid-axial slice alone (for a cohort strip)"),
)
#: Examples of ``POST /v1/cohorts`` bodies shown in the API document (and sent by its "Try it out").
REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "ranges": {
        "summary": "200 subjects aged 60-80, half female, large ventricles",
        "value": {
            "model": "demo",
            "name": "older adults, large ventricles",
            "n_subjects": 200,
            "seed": 42,
            "covariates": {
                "age": {"min": 60, "max": 80},
                "sex": {"female_fraction": 0.5},
                "ventricular_volume_mm3": {"min": 40000, "max": 60000},
            },
        },
    },
    "values": {
        "summary": "8 subjects with fixed covariates, DPM-Solver++ 15 steps",
        "value": {
            "model": "demo",
            "n_subjects": 8,
            "covariates": {
                "age": {"value": 65},
                "sex": {"value": "F"},
                "ventricular_volume_mm3": {"value": 30000},
                "brain_volume_mm3": {"value": 1500000},
            },
            "sampler": {"name": "dpmpp2m", "steps": 15},
        },
    },
    "subjects": {
        "summary": "an explicit subjects list (a seed regenerates an earlier subject)",
        "value": {
            "model": "demo",
            "subjects": [
                {"age": 70, "sex": "M", "ventricular_volume_mm3": 45000, "brain_volume_mm3": 1400000, "seed": 123},
                {"age": 55, "sex": "F", "ventricular_volume_mm3": 20000, "brain_volume_mm3": 1550000},
            ],
        },
    },
}
API_DESCRIPTION = """Synthetic brain MRI cohorts from the latent diffusion model of Pinaya et al. 2022 (T1w, conditioned
on age in years, sex, ventricular and brain volume in mm3). Research use only.

Authenticate with `Authorization: Bearer <API key>` (the Authorize button). Submit a cohort with
`POST /v1/cohorts`, watch `/v1/cohorts/{id}/events`, list its subjects with previews, download the BIDS
archive. Every error answers `{"detail": ...}`; a 422 lists each invalid field's `loc`."""
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: ERROR_RESPONSES[401],
    413: {**_ERROR, "description": "request body over the server's limit"},
    415: {**_ERROR, "description": "body is not application/json"},
    422: {
        "description": "invalid request: each error's loc names the field",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationErrors"}}},
    },
    429: {**_ERROR, "description": "too many of the tenant's cohorts are queued or running"},
    503: ERROR_RESPONSES[503],
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with ``POST /v1/cohorts``'s request body (the route reads the raw body itself,
    to bound its size and parse it strictly, so FastAPI cannot see it)."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema = CohortRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["CohortRequest"] = schema
        components["Error"] = {
            "type": "object",
            "properties": {"detail": {"type": "string"}},
            "required": ["detail"],
        }
        components["ValidationErrors"] = {
            "type": "object",
            "properties": {
                "detail": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                            "msg": {"type": "string"},
                            "type": {"type": "string"},
                        },
                        "required": ["loc", "msg"],
                    },
                }
            },
            "required": ["detail"],
        }
        document["paths"]["/v1/cohorts"]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/CohortRequest"},
                    "examples": REQUEST_EXAMPLES,
                }
            },
        }
        app.openapi_schema = document
    return app.openapi_schema


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The API for ``settings`` (default: read from the environment)."""
    settings = settings or ServiceSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_format)
    if not settings.api_keys:
        raise ValueError("no API keys configured: set BRAINSYNTH_API_KEYS (TENANT=KEY,...) or BRAINSYNTH_API_KEYS_FILE")
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.readiness.start()
        yield
        service.readiness.stop()

    app = FastAPI(
        title="BrainSynth",
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served below from local assets (the default loads Swagger UI from a CDN)
        redoc_url=None,
    )
    app.state.service = service
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # Cross-origin browser calls only from the origins an operator lists (none by default: the API is
    # same-origin); a preflight from any other origin is answered 400.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        expose_headers=["Location", "Retry-After"],
        max_age=600,
    )
    app.add_middleware(SecurityHeaders)
    metrics = ApiMetrics(service.readiness.redis)  # the prober's client: 0.5 s timeouts, no retries
    app.add_middleware(RequestMetricsAndLog, metrics=metrics)

    @app.exception_handler(BrainSynthError)
    async def _domain_error(_request: Request, err: BrainSynthError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_request: Request, err: redis.RedisError) -> JSONResponse:
        log.warning("Redis unavailable: %s", err)
        detail = "the job store (Redis) is unavailable: retry shortly"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(StorageError)
    async def _storage_down(_request: Request, err: StorageError) -> JSONResponse:
        log.warning("object storage unavailable: %s", err)
        detail = "object storage is unavailable: retry shortly"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page: sign in, design and watch cohorts, previews, downloads (all through /v1)."""
        return FileResponse(WEB_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                               "Cache-Control": "no-cache"})  # fmt: skip

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        """Swagger UI for /openapi.json, from local assets."""
        return FileResponse(WEB_DIR / "docs.html", headers={"Content-Security-Policy": DOCS_CSP,
                                                              "Cache-Control": "no-cache"})  # fmt: skip

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> FileResponse:
        """ReDoc for /openapi.json, from local assets."""
        return FileResponse(WEB_DIR / "redoc.html", headers={"Content-Security-Policy": DOCS_CSP,
                                                               "Cache-Control": "no-cache"})  # fmt: skip

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Alive (no dependencies checked; answered on the event loop, never queued behind other work)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(
        workers: Annotated[
            Literal["required", "optional"],
            Query(description="optional: ready without a live worker (an orchestrator that scales workers to zero)"),
        ] = "required",
    ) -> JSONResponse:
        """Ready: Redis and object storage answer and a worker beat in the last 10 s (probed each second)."""
        checks = service.readiness.snapshot()
        ready = checks["ready"] or (
            workers == "optional" and checks.get("redis") is True and checks.get("storage") is True
        )
        return JSONResponse({**checks, "ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Response:
        """Prometheus text format: requests by route and status, latency, cohorts by status, subjects by
        outcome, queued and unacknowledged tasks, live workers (no tenant in any label)."""
        wanted = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        if wanted is not None and not (credentials and secrets.compare_digest(credentials.credentials, wanted)):
            raise HTTPException(
                401, "send Authorization: Bearer <BRAINSYNTH_METRICS_TOKEN>", {"WWW-Authenticate": "Bearer"}
            )
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["models"], responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]})
    def models(_tenant: Tenant) -> dict[str, list[dict[str, Any]]]:
        """Models on this server with their conditioning ranges (physical units)."""
        return {"models": [_model_summary(entry) for entry in list_models(check_networks=False)]}

    @app.post("/v1/cohorts", status_code=202, response_model=CohortStatus, tags=["cohorts"], responses=SUBMIT_RESPONSES)
    async def submit(
        request: Request,
        response: Response,
        tenant: Tenant,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> CohortStatus:
        """Queue a cohort (body: CohortRequest). 202 with Location; 422 names the invalid field."""
        media_type, _, parameters = (request.headers.get("content-type") or "").partition(";")
        charset = parameters.strip().lower().removeprefix("charset=").strip('"') if parameters.strip() else "utf-8"
        if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
            raise HTTPException(415, "send the cohort request as JSON with Content-Type: application/json (UTF-8)")
        raw = await _read_body(request, settings.max_body_bytes)
        record, _created = await run_in_threadpool(service.submit, tenant, raw, idempotency_key)
        response.headers["Location"] = f"/v1/cohorts/{record.id}"
        response.headers["Retry-After"] = "2"
        return await run_in_threadpool(service.status, record)

    @app.get(
        "/v1/cohorts",
        response_model=CohortPage,
        tags=["cohorts"],
        responses={401: ERROR_RESPONSES[401], 422: SUBMIT_RESPONSES[422], 503: ERROR_RESPONSES[503]},
    )
    def list_cohorts(
        tenant: Tenant,
        page_size: Annotated[int, Query(ge=1)] = 20,
        page_token: str | None = None,
    ) -> CohortPage:
        """The caller's cohorts, newest first."""
        size = min(page_size, settings.page_size_max)
        before = _read_page_token(page_token) if page_token else None
        rows = service.state.list_page(tenant, before, size + 1)
        cohorts = []
        for cohort_id, _ in rows[:size]:
            record = service.state.get(cohort_id)
            if record is not None:
                cohorts.append(service.status(record))
        token = _page_token(rows[size - 1][1], rows[size - 1][0]) if len(rows) > size else None
        return CohortPage(cohorts=cohorts, next_page_token=token)

    @app.get("/v1/cohorts/{cohort_id}", response_model=CohortStatus, tags=["cohorts"], responses=ERROR_RESPONSES)
    def get_cohort(cohort_id: str, tenant: Tenant) -> CohortStatus:
        return service.status(service.load(tenant, cohort_id))

    @app.get("/v1/cohorts/{cohort_id}/events", tags=["cohorts"], responses=STREAM_RESPONSES)
    async def events(cohort_id: str, tenant: Reader) -> StreamingResponse:
        """Server-Sent Events: a ``status`` event on every change, until a final state."""
        await run_in_threadpool(service.load, tenant, cohort_id)

        async def stream() -> AsyncIterator[str]:
            last, last_sent = None, time.monotonic()
            while True:
                record = await run_in_threadpool(service.state.get, cohort_id)
                if record is None:
                    yield 'event: error\ndata: {"detail": "cohort no longer exists"}\n\n'
                    return
                body = (await run_in_threadpool(service.status, record)).model_dump_json()
                if body != last:
                    yield f"event: status\ndata: {body}\n\n"
                    last, last_sent = body, time.monotonic()
                elif time.monotonic() - last_sent > 15:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
                if record.status in FINAL:
                    return
                await asyncio.sleep(0.5)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @app.get(
        "/v1/cohorts/{cohort_id}/subjects", response_model=SubjectPage, tags=["cohorts"], responses=ERROR_RESPONSES
    )
    def subjects(cohort_id: str, tenant: Tenant) -> SubjectPage:
        """Per-subject covariates, seed, status and short-lived presigned URLs of stored files."""
        return service.subjects(service.load(tenant, cohort_id))

    @app.get("/v1/cohorts/{cohort_id}/archive", tags=["cohorts"], responses=ARCHIVE_RESPONSES)
    def archive(cohort_id: str, tenant: Reader) -> StreamingResponse:
        """The cohort's BIDS dataset as a ZIP (ZIP64, stored), streamed from object storage."""
        entries = service.archive_entries(service.load(tenant, cohort_id))
        headers = {"Content-Disposition": f'attachment; filename="cohort-{cohort_id}.zip"'}
        return StreamingResponse(stream_zip(entries), media_type="application/zip", headers=headers)

    @app.post(
        "/v1/cohorts/{cohort_id}/link-token", response_model=LinkTokenOut, tags=["cohorts"], responses=ERROR_RESPONSES
    )
    def link_token(cohort_id: str, tenant: Tenant) -> LinkTokenOut:
        """A token, valid 10 minutes, that opens this cohort's events, previews and archive as ?token=
        (for browsers: EventSource and <img> cannot send the API key, which must never go in a URL)."""
        record = service.load(tenant, cohort_id)
        token, issued = service.links.issue(tenant, record.id)
        expires = datetime.fromtimestamp(issued.expires_at, UTC).isoformat().replace("+00:00", "Z")
        return LinkTokenOut(token=token, cohort_id=record.id, expires_at=expires, expires_in_s=LINK_TOKEN_TTL_S)

    def preview_route(kind: str) -> Callable[..., Response]:
        def preview(
            cohort_id: str,
            participant_id: str,
            tenant: Reader,
            if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
        ) -> Response:
            return service.preview(service.load(tenant, cohort_id), participant_id, kind, if_none_match)

        return preview

    for kind, suffix, what in PREVIEW_ROUTES:
        app.add_api_route(
            f"/v1/cohorts/{{cohort_id}}/subjects/{{participant_id}}/{suffix}",
            preview_route(kind),
            methods=["GET"],
            tags=["cohorts"],
            response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": f"PNG: {what}"}, **ERROR_RESPONSES},
            summary=f"Preview of a stored subject: {what}",
            description="Neurological convention (the subject's left on the left), labelled L/R, A/P, S/I, "
            "intensity window 0-1 for every subject. API key or link token. Cached privately (ETag; immutable).",
            name=f"preview_{kind}",
        )

    @app.post(
        "/v1/cohorts/{cohort_id}/cancel", response_model=CohortStatus, tags=["cohorts"], responses=CONFLICT_RESPONSES
    )
    def cancel(cohort_id: str, tenant: Tenant) -> CohortStatus:
        """Queued subjects are not run; finished ones stay; the status becomes canceled."""
        return service.status(service.cancel(service.load(tenant, cohort_id)))

    @app.delete("/v1/cohorts/{cohort_id}", status_code=204, tags=["cohorts"], responses=CONFLICT_RESPONSES)
    def delete(cohort_id: str, tenant: Tenant) -> Response:
        """Remove a finished or canceled cohort and all its objects."""
        service.delete(service.load(tenant, cohort_id))
        return Response(status_code=204)

    return app
