"""Plain logic of the measuring task (no Celery here): SAMSEG on one stored subject, its outputs into the
cohort's derivative dataset, its measurement into the subject's T1w sidecar.

Also renders the ``labels`` preview (the mid-slices with SAMSEG's brain and ventricle outlines).
Idempotent: the sidecar is rewritten last, with ``Measured.measure == "samseg"``, and a subject whose sidecar
says so is never measured again; the derivative files before it have deterministic keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Literal

from jobs.contract import MeasureJob
from jobs.state import bids_prefix, preview_key
from jobs.storage import ObjectStore
from models.dataset.bids import dumps, measured_sidecar, sidecar_path, t1w_path
from models.dataset.segmentation import Samseg, label_outlines_png
from worker import metrics

log = logging.getLogger(__name__)

MeasureOutcome = Literal["measured", "already_measured", "not_stored"]


def measure_subject(
    job: MeasureJob, store: ObjectStore, samseg: Samseg, should_stop: Callable[[], bool] | None = None
) -> MeasureOutcome:
    """Segment the subject's stored T1w image with SAMSEG and record what it measured.

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
    if (sidecar.get("Measured") or {}).get("measure") == "samseg":
        return "already_measured"
    image = store.get_bytes(prefix + t1w_path(job.participant_id))
    result, measurement, files = samseg.segment(job.participant_id, image, job.qc_tolerance, should_stop)
    metrics.MEASURE_SECONDS.observe(result.seconds)
    for relative, content in {**samseg.dataset_files(), **files}.items():
        content_type = "application/gzip" if relative.endswith(".gz") else "text/plain"
        store.put_bytes(prefix + relative, content, content_type)
    outlines = label_outlines_png(image, result.dseg, list(samseg.labels))
    store.put_bytes(preview_key(job.tenant, job.cohort_id, job.participant_id, "labels"), outlines, "image/png")
    updated = measured_sidecar(job.participant_id, sidecar, measurement)
    store.put_bytes(prefix + sidecar_path(job.participant_id), dumps(updated).encode(), "application/json")
    log.info("SAMSEG measured %s in %.0f s: ventricles %.0f mm3, brain %.0f mm3", job.participant_id, result.seconds,
             measurement.ventricular_volume_mm3, measurement.brain_volume_mm3)  # fmt: skip
    return "measured"
