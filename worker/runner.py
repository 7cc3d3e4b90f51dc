"""Plain logic of the worker's tasks (no Celery here): sample subjects into object storage; finalise a cohort.

Both are idempotent: keys are deterministic, a subject's sidecar is written last and marks it stored, and a
cohort's manifest is written last and marks the dataset complete.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from jobs.contract import FinalizeJob, SubjectBatch, SubjectJob, SubjectResult
from jobs.records import Digest, StreamDigest, SubjectRecords, archive_index_key, digest
from jobs.state import StoredCohort, bids_prefix, cohort_json_key, preview_key, stored_among, stored_of
from jobs.storage import ObjectStore
from models.catalogue.config import ModelConfig
from models.dataset.bids import (
    DEFAULT_COHORT_NAME,
    MANIFEST,
    QC_PASS,
    SamplerSettings,
    manifest,
    record_from_sidecar,
    sidecar_essentials,
    sidecar_path,
    t1w_path,
)
from models.dataset.previews import render_previews
from models.dataset.writer import (
    Accepted,
    VolumeMeasure,
    dataset_level_files,
    measurement_of,
    regenerate_outside_tolerance,
    subject_files,
)
from models.errors import GenerationStopped
from models.inference.pipeline import BrainLDMPipeline, StopCheck, SubjectSample
from worker import metrics
from worker.writer import BackgroundWriter

log = logging.getLogger(__name__)

#: Uploads of one subject's files in parallel (object storage round trips, not CPU): a batch's last subject, which
#: nothing overlaps, is stored in about one round trip instead of four.
_UPLOADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="brainsynth-upload")


def generate_subjects(
    batch: SubjectBatch,
    store: ObjectStore,
    pipeline_for: Callable[[str], BrainLDMPipeline],
    writer_threads: int = 1,
    should_stop: StopCheck | None = None,
    measure_for: Callable[[str], VolumeMeasure] | None = None,
    records: SubjectRecords | None = None,
) -> list[SubjectResult]:
    """Sample a batch of subjects together and upload each one whose sidecar (written last) is missing,
    ``writer_threads`` subjects at a time in the background while later subjects decode.

    When ``should_stop`` answers true (the cohort was canceled), sampling stops within one network block:
    subjects already decoded are still written, the rest come back as ``not_run``.

    A redelivered batch is sampled whole again, so the subjects it still has to store get the same bytes
    as in an undisturbed run (values depend slightly on the batch); stored ones are never rewritten.

    A job of a later attempt (``attempt`` > 1: SAMSEG measured the stored one outside tolerance) is sampled
    alone with that attempt's seed and replaces the stored image, previews and sidecar (last, unmeasured), unless
    its sidecar already records that attempt.

    With ``records``, each subject's files are recorded (sha256, size, the participants.tsv fields) before its
    sidecar is uploaded (:mod:`jobs.records`), so finalisation need not read them back.

    With ``qc: probe``, each subject's volumes are measured back by ``measure_for(model)`` before its sidecar
    is written, so a stored subject always carries its measurement and QC flag; with ``max_attempts`` > 1 a
    subject measured outside tolerance is sampled again alone with the next attempt's seed once the batch is
    done (:func:`models.dataset.writer.regenerate_outside_tolerance`), deterministically, so a redelivered
    batch stores the same attempts.
    """
    first = batch.subjects[0]
    prefix = bids_prefix(first.tenant, first.cohort_id)
    if first.attempt == 1:
        done = stored_of(store, prefix, (job.participant_id for job in batch.subjects))
    else:  # a later attempt (sent back by a measuring worker) replaces the stored one, once
        stored_attempt = _stored_attempt(store, prefix, first.participant_id)
        done = {first.participant_id} if stored_attempt >= first.attempt else set()
    missing = [job for job in batch.subjects if job.participant_id not in done]
    results = {
        job.participant_id: SubjectResult(
            participant_id=job.participant_id, image_key=prefix + t1w_path(job.participant_id), outcome="already_stored"
        )
        for job in batch.subjects
    }
    if missing:
        pipeline = pipeline_for(first.model)
        specs = {job.participant_id: job.spec() for job in batch.subjects}
        settings = SamplerSettings(
            first.sampler, first.steps, 0.0, len(batch.subjects), first.dtype, pipeline.execution
        )

        def store_subject(item: tuple[SubjectJob, Accepted | SubjectSample]) -> None:
            job, kept = item
            started = time.perf_counter()
            pid = job.participant_id
            if isinstance(kept, SubjectSample):
                kept_spec, sample, measurement, attempt, made_by = specs[pid], kept, None, job.attempt, settings
            else:
                kept_spec, sample, measurement, attempt = kept.spec, kept.sample, kept.measurement, kept.attempt
                made_by = settings if attempt == 1 else replace(settings, batch_size=1)
            _, files = subject_files(pipeline.config, kept_spec, sample, made_by, str(pipeline.device), measurement,
                                     attempt)  # fmt: skip
            sidecar = sidecar_path(pid)
            # Everything but the sidecar goes up at once (the image, the previews, the record); the sidecar, which
            # marks the subject stored, only once they all are.
            uploads = [
                (prefix + relative, content, "application/gzip" if relative.endswith(".gz") else "application/json")
                for relative, content in files.items()
                if relative != sidecar
            ]
            previews = render_previews(sample.volume, np.asarray(pipeline.config.affine))
            uploads += [
                (preview_key(job.tenant, job.cohort_id, pid, kind), png, "image/png") for kind, png in previews.items()
            ]
            pending = [_UPLOADS.submit(store.put_bytes, *upload) for upload in uploads]
            if records is not None:
                essentials = sidecar_essentials(json.loads(files[sidecar]))
                pending.append(_UPLOADS.submit(records.put, job.tenant, job.cohort_id, pid, essentials, files))
            for future in pending:
                future.result()
            store.put_bytes(prefix + sidecar, files[sidecar], "application/json")
            device = str(pipeline.device)
            metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
            metrics.SUBJECTS.labels(job.model, job.sampler, device).inc()
            metrics.SUBJECT_SECONDS.labels(job.model, job.sampler, device).observe(sample.seconds)
            metrics.DECODE_SECONDS.labels(job.model, device).observe(sample.decode_seconds)
            log.info(
                "subject stored",
                extra={"cohort_id": job.cohort_id, "subject_id": pid, "tenant": job.tenant,
                       "seconds": round(sample.seconds, 3), "write_seconds": round(time.perf_counter() - started, 3)},
            )  # fmt: skip

        samples = pipeline.generate(
            [spec.covariates for spec in specs.values()],
            [spec.seed for spec in specs.values()],
            sampler=first.sampler,
            num_inference_steps=first.steps,
            guidance=first.guidance,
            batch_size=len(batch.subjects),
            extrapolate=first.extrapolate,
            should_stop=should_stop,
        )
        for job in missing:
            results[job.participant_id] = results[job.participant_id].model_copy(update={"outcome": "not_run"})
        measure = measure_for(first.model) if first.qc == "probe" and measure_for is not None else None

        def regenerated(job: SubjectJob, sample: SubjectSample) -> Accepted:
            assert measure is not None
            return regenerate_outside_tolerance(
                pipeline, specs[job.participant_id], sample, measure, max_attempts=job.max_attempts,
                sampler=job.sampler, num_inference_steps=job.steps, tolerance=job.qc_tolerance,
                extrapolate=job.extrapolate,
            )  # fmt: skip

        # Subject i is encoded and uploaded while subject i + 1 is decoded; all are written before returning.
        retry: list[tuple[SubjectJob, SubjectSample]] = []
        with BackgroundWriter(store_subject, threads=writer_threads) as writer:
            try:
                for job, sample in zip(batch.subjects, samples, strict=True):
                    if job not in missing:
                        continue
                    kept: Accepted | SubjectSample = sample
                    if measure is not None:
                        measured = measurement_of(measure, sample.volume, "probe", job.qc_tolerance)
                        kept = Accepted(specs[job.participant_id], sample, measured)
                        if measured.qc(kept.spec.covariates) != QC_PASS and job.max_attempts > 1:
                            retry.append((job, sample))  # sampled again alone once the batch is done
                            continue
                    writer.submit((job, kept))
                    results[job.participant_id] = results[job.participant_id].model_copy(update={"outcome": "stored"})
                for job, sample in retry:
                    if should_stop is not None and should_stop():
                        break
                    writer.submit((job, regenerated(job, sample)))
                    results[job.participant_id] = results[job.participant_id].model_copy(update={"outcome": "stored"})
            except GenerationStopped:
                pass  # the subjects submitted so far are written when the writer closes; the rest are not run
        metrics.record_gpu_peak(str(pipeline.device))
    return [results[job.participant_id] for job in batch.subjects]


def _stored_attempt(store: ObjectStore, prefix: str, participant: str) -> int:
    """The attempt whose files are stored for ``participant`` (its sidecar's ``Attempt``), 0 when none is."""
    raw = store.get_bytes_if_present(prefix + sidecar_path(participant))
    return 0 if raw is None else int(json.loads(raw).get("Attempt") or 1)


def finalize_cohort(
    job: FinalizeJob, store: ObjectStore, config: ModelConfig, records: SubjectRecords | None = None
) -> list[str]:
    """Write the dataset-level BIDS files for the subjects stored so far, then the manifest (last).

    participants.tsv lists exactly the subjects present (all of them for a succeeded cohort; the finished ones
    for a canceled or failed one). With ``records`` both participants.tsv and SHA256SUMS come from what the
    workers recorded as they uploaded (:mod:`jobs.records`): no subject's file is read back, only small
    dataset-level files no record names (SAMSEG's derivative dataset files). A subject without a record (one
    stored before records existed) is read back: its sidecar, and its files hashed as they stream. Just before
    the manifest it writes the archive index (every file's size and CRC-32, :func:`jobs.records.archive_index_key`)
    that the API lays the ZIP out from. Returns the subjects' ids.
    """
    prefix = bids_prefix(job.tenant, job.cohort_id)
    stored = StoredCohort.model_validate_json(store.get_bytes(cohort_json_key(job.tenant, job.cohort_id)))
    name = str(stored.request.get("name") or DEFAULT_COHORT_NAME)
    participants = [subject.participant_id for subject in stored.subjects]
    keys = store.list_keys(prefix)
    stored_now = stored_among(set(keys), prefix, participants)
    present = [p for p in participants if p in stored_now]
    recorded = records.load(job.tenant, job.cohort_id, present) if records is not None else {}
    known: dict[str, Digest] = {}
    for record in recorded.values():
        known.update(record["files"])
    rows = [
        record_from_sidecar(
            p, recorded[p]["sidecar"] if p in recorded else json.loads(store.get_bytes(prefix + sidecar_path(p)))
        )
        for p in present
    ]
    like_report = (stored.request.get("like") or {}).get("report")
    files = dataset_level_files(config, name, rows, stored.request.get("authors"), like_report)
    for relative, content in files.items():
        store.put_bytes(prefix + relative, content, "image/png" if relative.endswith(".png") else "text/plain")
        known[relative] = digest(content)
    listed = sorted({key[len(prefix) :] for key in keys} | set(files))
    listed = [relative for relative in listed if relative != MANIFEST]
    for relative in listed:
        if relative not in known:  # a file no record names: its digests as it streams
            streamed = StreamDigest()
            for chunk in store.stream(prefix + relative):
                streamed.update(chunk)
            known[relative] = streamed.digest()
    text = manifest((relative, known[relative][0]) for relative in listed).encode()
    index = [[relative, known[relative][1], known[relative][2]] for relative in listed]
    index.append([MANIFEST, len(text), zlib.crc32(text)])
    store.put_bytes(archive_index_key(job.tenant, job.cohort_id), json.dumps(index).encode(), "application/json")
    store.put_bytes(prefix + MANIFEST, text, "text/plain")
    return [r.participant_id for r in rows]
