"""The BrainSynth HTTP API (v1): cohort jobs queued to Celery workers, results in object storage.

No torch here: requests are validated with the model layer's torch-free design code and model.json files,
subjects are queued by task name, and results are read from object storage. Run it with
``uvicorn service.app:create_app --factory`` (settings from ``BRAINSYNTH_*`` variables) or ``brainsynth up``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from models.bids import participant_id, sidecar_path, t1w_path
from models.conditioning import Covariates, normalise
from models.design import (
    DEFAULT_STEPS,
    SAMPLERS,
    CohortDesign,
    Span,
    SubjectSpec,
    check_sampler,
    design_subjects,
    subject_seed,
)
from models.errors import BrainSynthError, ConditioningError, SamplingError
from models.registry import ModelEntry, list_models
from service.archive import stream_zip
from service.schemas import CohortPage, CohortRequest, CohortStatus, Progress, SubjectOut, SubjectPage
from service.settings import ServiceSettings
from worker.contract import GENERATE_SUBJECTS, SubjectBatch, SubjectJob
from worker.queue import create_app as create_celery
from worker.state import (
    FINAL,
    MANIFEST,
    CohortRecord,
    CohortState,
    Status,
    StoredCohort,
    bids_prefix,
    cohort_json_key,
    connect,
    recover_cohort,
    register_cohort,
    stored_subjects,
    write_final_state,
)
from worker.storage import ObjectStore, cohort_prefix

log = logging.getLogger(__name__)


def _invalid(loc: list[str | int], message: str) -> HTTPException:
    """A 422 in FastAPI's own shape, naming the field."""
    return HTTPException(422, detail=[{"loc": loc, "msg": message, "type": "value_error"}])


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class Service:
    """The API's connections and the logic behind each route (routes stay thin)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.store = ObjectStore(
            settings.s3_endpoint,
            settings.s3_access_key.get_secret_value(),
            settings.s3_secret_key.get_secret_value(),
            settings.s3_bucket,
            secure=settings.s3_secure,
            public_endpoint=settings.s3_public_endpoint,
        )
        self.store.ensure_bucket()
        self.state = CohortState(connect(settings.broker_url))
        self.celery = create_celery(settings)

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
        try:
            document = json.loads(raw)
            request = CohortRequest.model_validate(document)
        except json.JSONDecodeError as err:
            raise _invalid(["body"], f"not valid JSON: {err}") from err
        except ValidationError as err:
            errors = json.loads(err.json(include_url=False, include_context=False, include_input=False))
            raise HTTPException(422, detail=[{**e, "loc": ["body", *e["loc"]]} for e in errors]) from err
        completed, specs, entry = self.design(request)
        cohort_id = uuid.uuid4().hex
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255:
                raise _invalid(["header", "Idempotency-Key"], "must be 1-255 characters")
            body_hash = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
            binding = self.state.claim_idempotency_key(tenant, idempotency_key, body_hash, cohort_id)
            if binding["cohort_id"] != cohort_id:
                if binding["hash"] != body_hash:
                    raise _invalid(
                        ["header", "Idempotency-Key"],
                        "this key was used with a different request body: use a new key for a new request",
                    )
                return self._await_record(tenant, binding["cohort_id"]), False
        try:
            if self.state.active_count(tenant) >= self.settings.max_active_cohorts_per_tenant:
                raise HTTPException(
                    429,
                    detail=f"tenant {tenant} has {self.settings.max_active_cohorts_per_tenant} cohorts queued or "
                    "running (the limit): wait for one to finish or cancel one",
                    headers={"Retry-After": "30"},
                )
            jobs = [
                SubjectJob(
                    tenant=tenant,
                    cohort_id=cohort_id,
                    model=entry.name,
                    participant_id=spec.participant_id,
                    sex=spec.covariates.sex,
                    age=spec.covariates.age,
                    ventricular_volume_mm3=spec.covariates.ventricular_volume_mm3,
                    brain_volume_mm3=spec.covariates.brain_volume_mm3,
                    seed=spec.seed,
                    sampler=completed["sampler"]["name"],
                    steps=completed["sampler"]["steps"],
                    dtype=completed["dtype"],
                    extrapolate=completed["extrapolate"],
                )
                for spec in specs
            ]
            stored = StoredCohort(
                id=cohort_id,
                tenant=tenant,
                model=entry.name,
                created_at=time.time(),
                request=completed,
                subjects=jobs,
                subjects_per_task=self.settings.subjects_per_task,
            )
            record = register_cohort(self.state, self.store, stored)
        except BaseException:
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

    def _await_record(self, tenant: str, cohort_id: str, timeout: float = 10.0) -> CohortRecord:
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
        return StoredCohort.model_validate_json(self.store.get_bytes(cohort_json_key(record.tenant, record.id)))

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
                    participant_id=job.participant_id,
                    age=job.age,
                    sex=job.sex,
                    ventricular_volume_mm3=job.ventricular_volume_mm3,
                    brain_volume_mm3=job.brain_volume_mm3,
                    seed=job.seed,
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

    def cancel(self, record: CohortRecord) -> CohortRecord:
        if record.status in (Status.SUCCEEDED, Status.FAILED):
            raise HTTPException(409, f"cohort {record.id} has already {record.status.value}: nothing to cancel")
        if self.state.transition(record, Status.CANCELED, allowed_from={Status.QUEUED, Status.RUNNING}):
            write_final_state(self.store, self.state.get(record.id) or record)
        return self.state.get(record.id) or record

    def delete(self, record: CohortRecord) -> None:
        if record.status not in FINAL:
            raise HTTPException(409, f"cohort {record.id} is {record.status.value}: cancel it before deleting it")
        _, settled = self.state.progress(record.id)
        if settled < record.total:
            raise HTTPException(
                409,
                f"cohort {record.id} still has {record.total - settled} subjects in workers' hands: retry shortly",
                headers={"Retry-After": "10"},
            )
        self.store.delete_prefix(cohort_prefix(record.tenant, record.id))
        self.state.delete(record)

    def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            checks["redis"] = bool(self.state.redis.ping())
        except Exception as err:  # reported, not raised: readiness lists every failing part
            checks["redis"] = f"unreachable: {err}"
        try:
            checks["storage"] = bool(self.store.client.bucket_exists(self.store.bucket)) or "bucket missing"
        except Exception as err:
            checks["storage"] = f"unreachable: {err}"
        try:
            replies = self.celery.control.ping(timeout=1.0)
            checks["workers"] = len(replies) if replies else "no worker answered"
        except Exception as err:
            checks["workers"] = f"unreachable: {err}"
        return checks


def _model_summary(entry: ModelEntry) -> dict[str, Any]:
    config = entry.config
    ranges = config.conditioning
    return {
        "name": entry.name,
        "version": config.version,
        "description": config.description,
        "intended_use": config.intended_use,
        "ready": entry.ready,
        "image_shape": list(config.image_shape),
        "voxel_size_mm": list(config.voxel_size_mm),
        "conditioning": {
            "sex": {"values": ["F", "M"]},
            **{
                field: {"min": r.min, "max": r.max, "unit": r.unit, "description": r.description}
                for field in ("age", "ventricular_volume_mm3", "brain_volume_mm3")
                for r in [ranges.covariate(field)]
            },
        },
        "samplers": {name: {"default_steps": DEFAULT_STEPS[name]} for name in SAMPLERS},
        "max_steps": config.scheduler.num_train_timesteps,
    }


def _page_token(created_at: float, cohort_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}:{cohort_id}".encode()).decode()


def _read_page_token(token: str) -> float:
    try:
        return float(base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)[0])
    except (ValueError, UnicodeDecodeError) as err:
        raise _invalid(["query", "page_token"], "not a page token from this API") from err


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
    return tenant


Tenant = Annotated[str, Depends(_tenant_of)]


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The API for ``settings`` (default: read from the environment)."""
    settings = settings or ServiceSettings()  # type: ignore[call-arg]
    if not settings.api_keys:
        raise ValueError("no API keys configured: set BRAINSYNTH_API_KEYS (TENANT=KEY,...) or BRAINSYNTH_API_KEYS_FILE")
    service = Service(settings)
    app = FastAPI(
        title="BrainSynth",
        version="1",
        description="Synthetic brain MRI cohorts (Pinaya et al. 2022 latent diffusion). Research use only.",
    )
    app.state.service = service

    @app.exception_handler(BrainSynthError)
    async def _domain_error(_request: Request, err: BrainSynthError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Alive (no dependencies checked)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Ready: Redis, object storage and at least one worker answer."""
        checks = service.readiness()
        ready = checks["redis"] is True and checks["storage"] is True and isinstance(checks["workers"], int)
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    @app.get("/v1/models", tags=["models"])
    def models(_tenant: Tenant) -> dict[str, list[dict[str, Any]]]:
        """Models on this server with their conditioning ranges (physical units)."""
        return {"models": [_model_summary(entry) for entry in list_models(check_networks=False)]}

    @app.post("/v1/cohorts", status_code=202, response_model=CohortStatus, tags=["cohorts"])
    async def submit(
        request: Request,
        response: Response,
        tenant: Tenant,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> CohortStatus:
        """Queue a cohort (body: CohortRequest). 202 with Location; 422 names the invalid field."""
        raw = await _read_body(request, settings.max_body_bytes)
        record, _created = await run_in_threadpool(service.submit, tenant, raw, idempotency_key)
        response.headers["Location"] = f"/v1/cohorts/{record.id}"
        response.headers["Retry-After"] = "2"
        return await run_in_threadpool(service.status, record)

    @app.get("/v1/cohorts", response_model=CohortPage, tags=["cohorts"])
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

    @app.get("/v1/cohorts/{cohort_id}", response_model=CohortStatus, tags=["cohorts"])
    def get_cohort(cohort_id: str, tenant: Tenant) -> CohortStatus:
        return service.status(service.load(tenant, cohort_id))

    @app.get("/v1/cohorts/{cohort_id}/events", tags=["cohorts"])
    async def events(cohort_id: str, tenant: Tenant) -> StreamingResponse:
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

    @app.get("/v1/cohorts/{cohort_id}/subjects", response_model=SubjectPage, tags=["cohorts"])
    def subjects(cohort_id: str, tenant: Tenant) -> SubjectPage:
        """Per-subject covariates, seed, status and short-lived presigned URLs of stored files."""
        return service.subjects(service.load(tenant, cohort_id))

    @app.get("/v1/cohorts/{cohort_id}/archive", tags=["cohorts"])
    def archive(cohort_id: str, tenant: Tenant) -> StreamingResponse:
        """The cohort's BIDS dataset as a ZIP (ZIP64, stored), streamed from object storage."""
        entries = service.archive_entries(service.load(tenant, cohort_id))
        headers = {"Content-Disposition": f'attachment; filename="cohort-{cohort_id}.zip"'}
        return StreamingResponse(stream_zip(entries), media_type="application/zip", headers=headers)

    @app.post("/v1/cohorts/{cohort_id}/cancel", response_model=CohortStatus, tags=["cohorts"])
    def cancel(cohort_id: str, tenant: Tenant) -> CohortStatus:
        """Queued subjects are not run; finished ones stay; the status becomes canceled."""
        return service.status(service.cancel(service.load(tenant, cohort_id)))

    @app.delete("/v1/cohorts/{cohort_id}", status_code=204, tags=["cohorts"])
    def delete(cohort_id: str, tenant: Tenant) -> Response:
        """Remove a finished or canceled cohort and all its objects."""
        service.delete(service.load(tenant, cohort_id))
        return Response(status_code=204)

    return app
