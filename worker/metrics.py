"""The worker's Prometheus metrics, served by each worker process on its own port (``BRAINSYNTH_METRICS_PORT``).

Why a port per worker: a worker is one solo-pool process per GPU, often on another host than the API, and
a scraper (Prometheus, or Kubernetes pod annotations) finds each process where it runs; nothing is shared
between processes, so no multiprocess directory is needed, and a dead worker's series simply stop. Labels
are tenant-free (model, sampler, device, failure kind): nothing here names a tenant, cohort or subject.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

#: From tenths of a second (tiny CPU models) to ten minutes (full size, many steps, slow cards).
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

SUBJECTS = Counter(
    "brainsynth_worker_subjects_sampled_total", "Subjects sampled and stored", ["model", "sampler", "device"]
)
SUBJECT_SECONDS = Histogram(
    "brainsynth_worker_subject_seconds",
    "Wall time per subject: its share of the batch's denoising plus its decode",
    ["model", "sampler", "device"],
    buckets=SECONDS_BUCKETS,
)
DECODE_SECONDS = Histogram(
    "brainsynth_worker_decode_seconds", "Autoencoder decode per subject", ["model", "device"], buckets=SECONDS_BUCKETS
)
WRITE_SECONDS = Histogram(
    "brainsynth_worker_write_seconds",
    "Encoding and uploading one subject (NIfTI, previews, sidecar)",
    buckets=SECONDS_BUCKETS,
)
REDELIVERIES = Counter(
    "brainsynth_worker_redeliveries_total", "Subject batches delivered again (their worker died or was stopped)"
)
FAILURES = Counter("brainsynth_worker_failures_total", "Failed subject batches by cause", ["kind"])
MEASURE_SECONDS = Histogram(
    "brainsynth_worker_measure_seconds", "One SAMSEG run on a stored subject (measuring workers)",
    buckets=(*SECONDS_BUCKETS, 1200, 1800),
)  # fmt: skip
GPU_MEMORY_PEAK = Gauge(
    "brainsynth_worker_gpu_memory_peak_bytes", "Peak CUDA memory allocated by this process", ["device"]
)


def serve(port: int, host: str) -> None:
    """Serve ``/metrics`` of this process on ``host:port`` (a daemon thread)."""
    start_http_server(port, addr=host)


def record_gpu_peak(device: str) -> None:
    """Set the CUDA memory peak of ``device`` (does nothing off CUDA)."""
    if not device.startswith("cuda"):
        return
    import torch

    GPU_MEMORY_PEAK.labels(device=device).set(torch.cuda.max_memory_allocated(torch.device(device)))
