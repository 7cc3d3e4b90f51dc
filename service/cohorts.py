"""The logic behind the cohort routes: validate and queue cohorts, read their state, subjects, previews and
archive, cancel and delete them. Raises the domain errors of :mod:`service.errors` (never HTTP objects); the
routers (:mod:`service.api.routes`) only translate between HTTP and these calls.

No torch here: requests are validated with the model layer's torch-free design code and model.json files,
subjects are queued by task name, and results are read from object storage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from jobs.contract import MEASURE_SUBJECT, MeasureJob, SubjectJob
from jobs.dispatch import dispatch_chunk
from jobs.queue import create_app as create_celery
from jobs.records import StreamDigest, archive_index_key
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
    preview_key,
    read_stored_cohort,
    recover_cohort,
    register_cohort,
    samseg_attempts,
    stored_subjects,
    write_final_state,
)
from jobs.storage import cohort_prefix
from models.catalogue.registry import ModelEntry, list_models
from models.cohort.conditioning import Covariates, normalise
from models.cohort.design import (
    DEFAULT_STEPS,
    CohortDesign,
    Span,
    SubjectSpec,
    check_sampler,
    design_subjects,
    is_participant_label,
    participant_id,
    repeated_subject,
    subject_seed,
)
from models.cohort.like import ReferenceTable, like_subjects
from models.dataset.bids import DEFAULT_QC_TOLERANCE, MANIFEST, sidecar_path, t1w_path
from models.errors import ConditioningError, SamplingError
from service.archive import ArchiveEntry, ZipLayout, archive_part, subject_of
from service.errors import (
    ActiveLimitReached,
    BodyTooLarge,
    CohortConflict,
    CohortNotFound,
    InvalidField,
    InvalidRequest,
    NotFound,
)
from service.links import LinkSigner
from service.schemas import CohortPage, CohortRequest, CohortStatus, Progress, SubjectOut, SubjectPage
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

#: Parsed ``cohort.json`` documents the API keeps (each up to ~40 MB parsed at 100,000 subjects).
STORED_CACHE_SIZE = 4


@dataclass(frozen=True)
class Preview:
    """A stored subject's PNG and its entity tag."""

    png: bytes
    etag: str


def iso_time(timestamp: float) -> str:
    """``timestamp`` as ISO 8601 UTC with a ``Z``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def page_token(created_at: float, cohort_id: str) -> str:
    """The opaque token of the page after the cohort created at ``created_at``."""
    return base64.urlsafe_b64encode(f"{created_at!r}:{cohort_id}".encode()).decode()


def subject_token(participant: str) -> str:
    """The opaque token of the page of subjects after ``participant``."""
    return base64.urlsafe_b64encode(f"after:{participant}".encode()).decode()


def read_subject_token(token: str) -> str:
    """The participant a :func:`subject_token` encodes.

    Raises:
        InvalidField: not a token from this API (names ``page_token``).
    """
    try:
        kind, participant = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
    except (ValueError, UnicodeDecodeError, binascii.Error) as err:
        raise InvalidField(["query", "page_token"], "not a page token from this API") from err
    if kind != "after" or not is_participant_label(participant):
        raise InvalidField(["query", "page_token"], "not a page token from this API")
    return participant


def read_page_token(token: str) -> float:
    """The creation time a :func:`page_token` encodes.

    Raises:
        InvalidField: not a token from this API (names ``page_token``).
    """
    try:
        value = float(base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)[0])
    except (ValueError, UnicodeDecodeError, binascii.Error) as err:
        raise InvalidField(["query", "page_token"], "not a page token from this API") from err
    if not math.isfinite(value):
        raise InvalidField(["query", "page_token"], "not a page token from this API")
    return value


def parse_request(raw: bytes) -> CohortRequest:
    """The cohort request in ``raw`` (UTF-8 JSON parsed by pydantic-core: bad bytes, deep nesting and huge
    numbers are 422s, not 500s).

    Raises:
        InvalidRequest: each invalid field, located under ``body``.
    """
    try:
        request = CohortRequest.model_validate_json(raw)
    except ValidationError as err:
        errors = json.loads(err.json(include_url=False, include_context=False, include_input=False))
        raise InvalidRequest([{**e, "loc": ["body", *e["loc"]]} for e in errors]) from err
    return request


class CohortService:
    """The API's connections (Redis, object storage, the Celery client) and what each cohort route does."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.store = settings.object_store(settings.request_storage_retry_s)
        self.store.ensure_bucket()
        # A few retries only: a request waits seconds, not half a minute, then answers 503.
        self.state = CohortState(connect(settings.broker_url, retries=3))
        self.celery = create_celery(settings)
        self.links = LinkSigner(lambda: link_secret(self.state.redis))
        self._stored_cache: dict[tuple[str, str], StoredCohort] = {}
        self._stored_lock = threading.Lock()

    # -- submission -------------------------------------------------------------------------------
    def ready_model(self, name: str) -> ModelEntry:
        """The model ``name`` with its weights on this server (422 naming ``model`` otherwise)."""
        entries = {entry.name: entry for entry in list_models(check_networks=False)}
        entry = entries.get(name)
        if entry is None or not entry.ready:
            ready = ", ".join(sorted(n for n, e in entries.items() if e.ready)) or "none"
            reason = "has no weights on this server" if entry else "is not known"
            raise InvalidField(["body", "model"], f"model {name!r} {reason}; models ready here: {ready}")
        return entry

    def design(self, request: CohortRequest) -> tuple[dict[str, Any], list[SubjectSpec], ModelEntry]:
        """Validate everything checkable and decide every subject; returns the completed request."""
        limit = self.settings.max_subjects_per_cohort
        count = len(request.subjects) if request.subjects is not None else int(request.n_subjects or 0)
        if count > limit:
            field = "subjects" if request.subjects is not None else "n_subjects"
            raise InvalidField(["body", field], f"must be between 1 and {limit} subjects on this server, got {count}")
        entry = self.ready_model(request.model)
        scheduler = entry.config.scheduler
        steps = request.sampler.steps or DEFAULT_STEPS[request.sampler.name]
        try:
            check_sampler(request.sampler.name, steps, scheduler.num_train_timesteps, scheduler.prediction_type)
        except SamplingError as err:
            raise InvalidField(["body", *(err.field or "sampler").split(".")], str(err)) from err
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        completed = request.model_dump(mode="json")
        if request.like is not None:
            specs, report = self._like_subjects(request, seed, count, entry)
            # the rows are the user's study: the stored request keeps their size, hash and the comparison only
            completed["like"] = {"rows": len(request.like.rows), "report": report}
        else:
            specs = self._subjects(request, seed, count, entry)
        completed["seed"] = seed
        completed["sampler"]["steps"] = steps
        try:
            completed["guidance"] = entry.config.guidance_scale(request.guidance)
        except SamplingError as err:
            raise InvalidField(["body", "guidance"], str(err)) from err
        completed["qc"] = self._measure(request, entry)
        completed["qc_tolerance"] = request.qc_tolerance if request.qc_tolerance is not None else DEFAULT_QC_TOLERANCE
        completed["max_attempts"] = self._attempts(request, completed["qc"])
        return completed, specs, entry

    def _measure(self, request: CohortRequest, entry: ModelEntry) -> str:
        """The cohort's measure: as asked, or the model's volume probe where it has one, else none."""
        if request.qc is None:
            return "probe" if entry.has_volume_probe else "none"
        if request.qc == "samseg" and not self.settings.measure_samseg:
            raise InvalidField(
                ["body", "qc"],
                "samseg is not available on this server: it runs no SAMSEG measuring workers (start them with "
                "`brainsynth up --measure-workers N`, or set BRAINSYNTH_MEASURE_SAMSEG where they run); use probe "
                "(where the model has a volume probe) or none",
            )
        if request.qc == "probe" and not entry.has_volume_probe:
            raise InvalidField(["body", "qc"], f"model {entry.name!r} has no volume probe to measure with: use none")
        return request.qc

    @staticmethod
    def _attempts(request: CohortRequest, qc: str) -> int:
        """Attempts per subject: regeneration needs a measure to judge by."""
        attempts = request.max_attempts or 1
        if attempts > 1 and qc == "none":
            raise InvalidField(["body", "max_attempts"], "regenerating needs a measure: set qc to probe or samseg")
        return attempts

    def _like_subjects(
        self, request: CohortRequest, seed: int, count: int, entry: ModelEntry
    ) -> tuple[list[SubjectSpec], dict[str, Any]]:
        """Subjects drawn like the request's reference rows (:mod:`models.cohort.like`)."""
        assert request.like is not None
        rows = request.like.rows
        if len(rows) > self.settings.max_like_rows:
            raise BodyTooLarge(
                f"like.rows has {len(rows)} rows, over this server's limit of {self.settings.max_like_rows}: "
                "send a random sample of the table"
            )
        try:
            reference = ReferenceTable.from_rows([row.model_dump() for row in rows], "like.rows")
            return like_subjects(reference, count, seed, entry.config.conditioning, extrapolate=request.extrapolate)
        except ConditioningError as err:
            raise InvalidField(["body", "like" if err.field == "like" else err.field], str(err)) from err

    @staticmethod
    def _subjects(request: CohortRequest, seed: int, count: int, entry: ModelEntry) -> list[SubjectSpec]:
        """Every subject of the request: the listed ones, or ``count`` drawn by the cohort design."""
        ranges = entry.config.conditioning
        if request.subjects is not None:
            specs = []
            for index, subject in enumerate(request.subjects):
                covariates = Covariates(
                    subject.sex, subject.age, subject.ventricular_volume_mm3, subject.brain_volume_mm3
                )
                try:
                    normalise(covariates, ranges, extrapolate=request.extrapolate)
                except ConditioningError as err:
                    raise InvalidField(["body", "subjects", index, err.field], str(err)) from err
                own_seed = subject.seed if subject.seed is not None else subject_seed(seed, index)
                specs.append(SubjectSpec(participant_id(index), covariates, own_seed))
            if (twins := repeated_subject(specs)) is not None:
                earlier, later = twins
                raise InvalidField(
                    ["body", "subjects", later, "seed"],
                    f"subject {later} repeats subject {earlier} (same seed and covariates: the same brain twice); "
                    "change or drop its seed",
                )
            return specs
        given = request.covariates
        spans = {}
        for field in ("age", "ventricular_volume_mm3", "brain_volume_mm3"):
            spec = getattr(given, field) if given else None
            spans[field] = Span(*spec.bounds) if spec else None
        fraction = given.sex.fraction if given and given.sex else 0.5
        design = CohortDesign(count, seed, fraction, spans["age"], spans["ventricular_volume_mm3"],
                              spans["brain_volume_mm3"])  # fmt: skip
        try:
            return design_subjects(design, ranges, extrapolate=request.extrapolate)
        except ConditioningError as err:
            where = ["body", "covariates", err.field] if err.field in spans else ["body", err.field]
            raise InvalidField(where, str(err)) from err

    def submit(self, tenant: str, raw: bytes, idempotency_key: str | None) -> tuple[CohortRecord, bool]:
        """Validate, register and queue a cohort; returns (record, created now)."""
        request = parse_request(raw)
        completed, specs, entry = self.design(request)
        cohort_id = uuid.uuid4().hex
        if idempotency_key is not None:
            earlier = self._claim_idempotency_key(tenant, idempotency_key, request, cohort_id)
            if earlier is not None:
                return self._await_record(tenant, earlier), False
        reserved = False
        try:
            reserved = self.state.reserve_active(tenant, cohort_id, self.settings.max_active_cohorts_per_tenant)
            if not reserved:
                raise ActiveLimitReached(
                    f"tenant {tenant} has {self.settings.max_active_cohorts_per_tenant} cohorts queued or "
                    "running (the limit): wait for one to finish or cancel one"
                )
            shared = {"tenant": tenant, "cohort_id": cohort_id, "model": entry.name,
                      "sampler": completed["sampler"]["name"], "steps": completed["sampler"]["steps"],
                      "dtype": completed["dtype"], "extrapolate": completed["extrapolate"],
                      "guidance": completed["guidance"], "qc": completed["qc"],
                      "qc_tolerance": completed["qc_tolerance"], "max_attempts": completed["max_attempts"]}  # fmt: skip
            stored = StoredCohort(
                id=cohort_id,
                tenant=tenant,
                model=entry.name,
                created_at=time.time(),
                request=completed,
                subjects=[SubjectJob.from_spec(spec, **shared) for spec in specs],
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

    def _claim_idempotency_key(self, tenant: str, key: str, request: CohortRequest, cohort_id: str) -> str | None:
        """Bind ``key`` to ``cohort_id``; returns the earlier cohort's id when the key was used already."""
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise InvalidField(["header", "Idempotency-Key"], "must be 1-255 printable characters")
        body_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        binding = self.state.claim_idempotency_key(tenant, key, body_hash, cohort_id)
        if binding["cohort_id"] == cohort_id:
            return None
        if binding["hash"] != body_hash:
            raise InvalidField(
                ["header", "Idempotency-Key"],
                "this key was used with a different request body: use a new key for a new request",
            )
        return binding["cohort_id"]

    def enqueue(self, stored: StoredCohort, done: set[str] | None = None) -> None:
        """The cohort's first chunk of batches (``subjects_per_task`` consecutive subjects each, sampled together
        by a worker) and the continuation that queues the rest (:mod:`jobs.dispatch`); with ``done``, only the
        batches that still have a subject to store."""
        dispatch_chunk(self.celery, stored, 0, done or ())

    def _await_record(self, tenant: str, cohort_id: str, timeout: float = 5.0) -> CohortRecord:
        """The cohort a concurrent request with the same Idempotency-Key is creating."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.state.get(cohort_id)
            if record is not None:
                return record
            if time.monotonic() > deadline:
                raise CohortConflict("a request with this Idempotency-Key is still being processed: retry")
            time.sleep(0.1)

    # -- reading ----------------------------------------------------------------------------------
    def load(self, tenant: str, cohort_id: str) -> CohortRecord:
        """The caller's cohort (404 for another tenant's); rebuilt from object storage if Redis lost it."""
        if not cohort_id.isalnum() or len(cohort_id) > 64:
            raise CohortNotFound(cohort_id)
        record = self.state.get(cohort_id)
        if record is not None and record.tenant != tenant:
            # the same storage lookup a miss makes, so timing cannot tell another tenant's id from a random one
            self.store.get_bytes_if_present(cohort_json_key(tenant, cohort_id))
            raise CohortNotFound(cohort_id)
        if record is None:
            record = recover_cohort(self.state, self.store, tenant, cohort_id)
            if record is not None and record.status not in FINAL:
                stored = self.stored(record)
                done = stored_subjects(self.store, stored)
                self.enqueue(stored, done=done)
                if stored.request.get("qc") == "samseg":  # stored subjects whose measuring was lost with Redis
                    attempts = samseg_attempts(self.store, stored, done)
                    for job in stored.subjects:
                        attempt, measured = attempts.get(job.participant_id, (0, True))
                        if not measured:  # the attempt stored is the one to measure
                            subject = job.model_copy(update={"attempt": attempt})
                            self.celery.send_task(MEASURE_SUBJECT, args=[MeasureJob(subject=subject).model_dump()])
                log.warning("cohort %s was rebuilt from object storage and its missing work queued", cohort_id)
        if record is None or record.tenant != tenant:
            raise CohortNotFound(cohort_id)
        return record

    def stored(self, record: CohortRecord) -> StoredCohort:
        """The cohort's request as stored; 404 when it is gone (deleted while this request was answered).

        ``cohort.json`` never changes once written, so the last few read are kept parsed: paging through a
        100,000-subject cohort reads and parses its ~40 MB once, not once a page.
        """
        key = (record.tenant, record.id)
        stored = self._stored_cache.get(key)
        if stored is None:
            stored = read_stored_cohort(self.store, record.tenant, record.id)
            if stored is None:
                raise CohortNotFound(record.id)
            self._cache_stored(stored)
        return stored

    def _cache_stored(self, stored: StoredCohort) -> None:
        with self._stored_lock:
            self._stored_cache[(stored.tenant, stored.id)] = stored
            while len(self._stored_cache) > STORED_CACHE_SIZE:
                self._stored_cache.pop(next(iter(self._stored_cache)))

    def status(self, record: CohortRecord) -> CohortStatus:
        """The cohort's status body (progress, times, the completed request, links)."""
        done, _, measured = self.state.progress(record.id)
        measured = {"probe": done, "samseg": measured}.get(str(record.request.get("qc")), 0)
        base = f"/v1/cohorts/{record.id}"
        return CohortStatus(
            id=record.id,
            status=record.status.value,
            progress=Progress(done=done, total=record.total, measured=measured),
            created_at=iso_time(record.created_at),
            updated_at=iso_time(record.updated_at),
            request=record.request,
            error=record.error,
            links={
                "self": base,
                "events": f"{base}/events",
                "subjects": f"{base}/subjects",
                "archive": f"{base}/archive",
            },
        )

    def list_page(self, tenant: str, page_size: int, token: str | None) -> CohortPage:
        """The tenant's cohorts, newest first, ``page_size`` (at most the server's limit) after ``token``."""
        size = min(page_size, self.settings.page_size_max)
        before = read_page_token(token) if token else None
        rows = self.state.list_page(tenant, before, size + 1)
        cohorts = []
        for cohort_id, _ in rows[:size]:
            record = self.state.get(cohort_id)
            if record is not None:
                cohorts.append(self.status(record))
        next_token = page_token(rows[size - 1][1], rows[size - 1][0]) if len(rows) > size else None
        return CohortPage(cohorts=cohorts, next_page_token=next_token)

    def subjects(self, record: CohortRecord, page_size: int = 100, token: str | None = None) -> SubjectPage:
        """``page_size`` subjects (at most the server's page limit) after ``token``, in participant order: their
        covariates, seed and status, with presigned URLs of the stored ones (only this page's are signed)."""
        size = min(page_size, self.settings.page_size_max)
        jobs = self.stored(record).subjects
        start = 0
        if token:
            after = read_subject_token(token)
            start = next((i + 1 for i, job in enumerate(jobs) if job.participant_id == after), -1)
            if start < 0:
                raise InvalidField(["query", "page_token"], "not a page token of this cohort")
        page = jobs[start : start + size]
        done = self.state.done_among(record.id, [job.participant_id for job in page])
        prefix = bids_prefix(record.tenant, record.id)
        expiry = self.settings.presign_expiry_s
        out = []
        for job in page:
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
        next_token = subject_token(page[-1].participant_id) if start + size < len(jobs) and page else None
        return SubjectPage(cohort_id=record.id, subjects=out, next_page_token=next_token)

    def _check_finished(self, record: CohortRecord, what: str) -> None:
        """409 naming ``what`` until the cohort has finished and its manifest (written last) is stored."""
        prefix = bids_prefix(record.tenant, record.id)
        if record.status not in FINAL or not self.store.exists(prefix + MANIFEST):
            raise CohortConflict(
                f"cohort {record.id} is {record.status.value}: its {what} is ready once it has finished "
                "(watch /events or poll the status)",
                retry_after_s=5,
            )

    def archive(self, record: CohortRecord, part: int | None = None, parts: int | None = None) -> tuple[ZipLayout, str]:
        """The finished cohort's ZIP layout (its files under ``cohort-{id}/``, the manifest last) and its ETag;
        with ``part`` and ``parts``, that part of it (:func:`service.archive.archive_part`).

        Sizes and CRC-32 come from the archive index finalisation writes (:func:`jobs.records.archive_index_key`);
        a cohort finalised without one has its files read once to make it (then it is kept). The ETag is the
        index's hash: it changes whenever any file of the cohort does, so a resumed download never mixes two.
        """
        index, raw = self._archive_index(record)
        prefix = bids_prefix(record.tenant, record.id)
        root = f"cohort-{record.id}/"
        entries = [ArchiveEntry(root + relative, size, crc, prefix + relative) for relative, size, crc in index]
        version = hashlib.sha256(raw)
        if part is not None or parts is not None:
            entries = self._part(entries, part, parts)
            version.update(f"part {part} of {parts}".encode())
        return ZipLayout(entries), '"' + version.hexdigest()[:40] + '"'

    @staticmethod
    def _part(entries: list[ArchiveEntry], part: int | None, parts: int | None) -> list[ArchiveEntry]:
        """The entries of one part of the archive (422 naming ``part`` or ``parts`` when they do not name one)."""
        if part is None or parts is None:
            missing = "part" if part is None else "parts"
            raise InvalidField(["query", missing], "part and parts go together: ?part=1&parts=4 is the first of 4")
        subjects = len({s for entry in entries if (s := subject_of(entry.name)) is not None})
        if not 1 <= parts <= max(subjects, 1):
            raise InvalidField(["query", "parts"], f"must be between 1 and the cohort's {subjects} subjects")
        if not 1 <= part <= parts:
            raise InvalidField(["query", "part"], f"must be between 1 and parts ({parts})")
        return archive_part(entries, part, parts)

    def file_manifest(self, record: CohortRecord, expiry_s: int) -> Iterator[dict[str, Any]]:
        """Every file of the finished cohort, as the archive lays them out (manifest last), with its size and a
        presigned URL valid ``expiry_s`` seconds: for tools that copy object by object. Signed as it streams."""
        index, _ = self._archive_index(record)
        prefix = bids_prefix(record.tenant, record.id)
        for relative, size, _ in index:
            url = self.store.presigned_get(prefix + relative, expiry_s)
            yield {"path": relative, "size": size, "url": url, "expires_in_s": expiry_s}

    def _archive_index(self, record: CohortRecord) -> tuple[list[list[Any]], bytes]:
        """The finished cohort's archive index ([relative path, size, CRC-32] per file, manifest last) and its
        stored bytes (409 until finished). Finalisation writes it just before the manifest, so a finished cohort's
        index lists its files without listing the bucket (one GET, whatever the cohort's size); a cohort finalised
        before indexes existed has its files listed and read once to make one."""
        self._check_finished(record, "archive")
        key = archive_index_key(record.tenant, record.id)
        raw = self.store.get_bytes_if_present(key)
        if raw is None:
            prefix = bids_prefix(record.tenant, record.id)
            index = self._index_by_reading(prefix, dict(self.store.list_objects(prefix)))
            raw = json.dumps(index).encode()
            self.store.put_bytes(key, raw, "application/json")
        return json.loads(raw), raw

    def _index_by_reading(self, prefix: str, objects: dict[str, int]) -> list[list[Any]]:
        """An archive index made by reading every file once (a cohort finalised before indexes existed)."""
        index = []
        for key in sorted(objects, key=lambda k: (k.endswith(MANIFEST), k)):
            streamed = StreamDigest()
            for chunk in self.store.stream(key):
                streamed.update(chunk)
            _, size, crc = streamed.digest()
            index.append([key[len(prefix) :], size, crc])
        return index

    def read_object(self, key: str, offset: int, length: int) -> Iterator[bytes]:
        """``length`` bytes of an object from ``offset`` (the archive's reader)."""
        return self.store.stream(key, offset=offset, length=length)

    def qc_file(self, record: CohortRecord, name: str) -> bytes:
        """A finished, measured cohort's QC report or scatter plot (409 until it has finished, 404 when its
        subjects were not measured)."""
        self._check_finished(record, "QC report")
        content = self.store.get_bytes_if_present(bids_prefix(record.tenant, record.id) + name)
        if content is None:
            raise NotFound(f"cohort {record.id} was not measured (qc {record.request.get('qc', 'none')}): no QC report")
        return content

    def preview(self, record: CohortRecord, participant: str, kind: str) -> Preview:
        """A stored subject's PNG preview (written by the worker before the subject's sidecar)."""
        png = None
        if is_participant_label(participant):
            png = self.store.get_bytes_if_present(preview_key(record.tenant, record.id, participant, kind))
        if png is None:
            raise NotFound(f"no preview of {participant} in cohort {record.id}: it is not stored (yet)")
        return Preview(png, f'"{hashlib.sha256(png).hexdigest()[:32]}"')

    # -- changes ----------------------------------------------------------------------------------
    def cancel(self, record: CohortRecord) -> CohortRecord:
        """Cancel a queued or running cohort (finished subjects stay); 409 once it succeeded or failed."""
        if record.status in (Status.SUCCEEDED, Status.FAILED):
            raise CohortConflict(f"cohort {record.id} has already {record.status.value}: nothing to cancel")
        if self.state.transition(record, Status.CANCELED, allowed_from={Status.QUEUED, Status.RUNNING}):
            write_final_state(self.store, self.state.get(record.id) or record)
        return self.state.get(record.id) or record

    def delete(self, record: CohortRecord) -> None:
        """Remove a finished or canceled cohort and all its objects; 409 while it is queued or running."""
        if record.status not in FINAL:
            raise CohortConflict(f"cohort {record.id} is {record.status.value}: cancel it before deleting it")
        # The record goes first: a task still holding one of its subjects stops at its next heartbeat and
        # removes whatever it wrote after this (worker.tasks); queued tasks find no cohort and do not run.
        self.state.delete(record)
        with self._stored_lock:
            self._stored_cache.pop((record.tenant, record.id), None)
        self.store.delete_prefix(cohort_prefix(record.tenant, record.id))
