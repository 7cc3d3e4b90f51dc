"""Plain logic of the measuring task (no Celery here): SAMSEG on one stored subject, its outputs into the
cohort's derivative dataset, its measurement into the subject's T1w sidecar.

Also renders the ``labels`` preview (the mid-slices with SAMSEG's brain and ventricle outlines).
Idempotent: the sidecar is rewritten last, with ``Measured.measure == "samseg"``, and a subject whose sidecar
says so is never measured again; the derivative files before it have deterministic keys.

Regeneration (``max_attempts`` > 1): an attempt measured outside tolerance while attempts are left is not
recorded (nothing is written); the caller sends the subject's next attempt to the generating workers, which
replace the stored image and sidecar (the sidecar records ``Attempt``), and that attempt is measured in turn.
The first passing attempt is kept, else the last: the earlier images are gone by then (the probe, measuring
in the generating worker, keeps the closest instead). A task for an attempt the sidecar has moved past is
``superseded``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Literal

from jobs.contract import MeasureJob
from jobs.records import SubjectRecords
from jobs.state import bids_prefix, preview_key
from jobs.storage import ObjectStore
from models.dataset.bids import (
    QC_PASS,
    dumps,
    measured_sidecar,
    record_from_sidecar,
    sidecar_essentials,
    sidecar_path,
    t1w_path,
)
from models.dataset.segmentation import Samseg, label_outlines_png
from worker import metrics

log = logging.getLogger(__name__)

MeasureOutcome = Literal["measured", "already_measured", "not_stored", "regenerate", "superseded"]


def measure_subject(
    job: MeasureJob,
    store: ObjectStore,
    samseg: Samseg,
    should_stop: Callable[[], bool] | None = None,
    records: SubjectRecords | None = None,
) -> MeasureOutcome:
    """Segment the subject's stored T1w image with SAMSEG and record what it measured; ``regenerate`` when it
    measured outside tolerance and the subject has attempts left (nothing recorded then).

    Raises:
        SegmentationError: SAMSEG failed on the image.
        SamsegStopped: ``should_stop`` answered true (its cohort was canceled or deleted).
        StorageError: object storage stayed down past the retry budget.
    """
    prefix = bids_prefix(job.tenant, job.cohort_id)
    raw = store.get_bytes_if_present(prefix + sidecar_path(job.participant_id))
    if raw is None:
        return "not_stored"
    sidecar = json.loads(raw)
    stored = record_from_sidecar(job.participant_id, sidecar)
    if stored.attempt > job.attempt:
        return "superseded"  # a later attempt is stored; its own task measures it
    if stored.attempt < job.attempt:
        return "not_stored"  # this attempt's image is not stored (yet)
    if (sidecar.get("Measured") or {}).get("measure") == "samseg":
        return "already_measured"
    image = store.get_bytes(prefix + t1w_path(job.participant_id))
    result, measurement, files = samseg.segment(job.participant_id, image, job.qc_tolerance, should_stop)
    metrics.MEASURE_SECONDS.observe(result.seconds)
    if measurement.qc(stored.covariates) != QC_PASS and job.subject.next_attempt() is not None:
        off = 100 * measurement.error(stored.covariates)
        log.info("SAMSEG measured %s attempt %d outside tolerance (%.0f %% off): generating attempt %d",
                 job.participant_id, job.attempt, off, job.attempt + 1)  # fmt: skip
        return "regenerate"
    derived = {**samseg.dataset_files(), **files}
    for relative, content in derived.items():
        content_type = "application/gzip" if relative.endswith(".gz") else "text/plain"
        store.put_bytes(prefix + relative, content, content_type)
    outlines = label_outlines_png(image, result.dseg, list(samseg.labels))
    store.put_bytes(preview_key(job.tenant, job.cohort_id, job.participant_id, "labels"), outlines, "image/png")
    updated = measured_sidecar(job.participant_id, sidecar, measurement)
    text = dumps(updated).encode()
    if records is not None:  # before the sidecar that marks the subject measured (jobs.records)
        records.put(job.tenant, job.cohort_id, job.participant_id, sidecar_essentials(updated),
                    {**derived, sidecar_path(job.participant_id): text}, merge=True)  # fmt: skip
    store.put_bytes(prefix + sidecar_path(job.participant_id), text, "application/json")
    log.info("SAMSEG measured %s in %.0f s: ventricles %.0f mm3, brain %.0f mm3", job.participant_id, result.seconds,
             measurement.ventricular_volume_mm3, measurement.brain_volume_mm3)  # fmt: skip
    return "measured"
