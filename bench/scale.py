"""``make bench-scale``: the service's own cost per subject from 10 to 10,000 subjects, through the stack
``brainsynth up`` starts (one worker, shipped settings), with the demo model and its cheapest sampler (dpmpp2m,
2 steps; ``qc: none``) so that what is measured is the service, not the sampler.

Per cohort size: wall time from POST to ``succeeded``; the in-process sampling time of the same subjects
(measured once on 64 of them in this process: :func:`sampling_seconds_per_subject`) and ``brainsynth sample``'s
per subject as a user runs it (:func:`cli_sample_seconds_per_subject`); the service time per subject (wall
minus sampling, over N); finalisation (the last subject stored to ``succeeded``, as a client
polling every 0.25 s sees it); p99 of ``GET /v1/cohorts/{id}`` and ``/healthz`` while the cohort runs; the
slowest of a few ``/subjects`` pages (first and middle); Redis memory per subject, two ways: ``used_memory``
after minus before (noisy for small cohorts), and the ``MEMORY USAGE`` of the cohort's keys and its tasks'
Celery results. The largest cohort is then checked: every subject
stored exactly once (the worker's log), and its archive downloaded in two goes (cut at a third, resumed with
``Range``), unpacked and verified with ``sha256sum -c``.

    python -m bench.scale [--sizes 10 100 1000 10000] [--out out/bench-scale.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.run import format_table
from models.catalogue.registry import resolve_model_dir
from models.cohort.conditioning import Covariates
from models.cohort.design import DEFAULT_BATCH_SIZE, subject_seed
from models.inference.pipeline import BrainLDMPipeline
from service.client import BrainSynthClient
from service.localstack import free_port
from service.stack import LocalStack

SAMPLER = {"name": "dpmpp2m", "steps": 2}
KEY = "bench-key"


def sampling_seconds_per_subject(n: int = 64) -> float:
    """In-process seconds per subject of the demo model with the bench's sampler, batches of the workers' size
    (model loaded first; nothing written)."""
    pipeline = BrainLDMPipeline.from_dir(resolve_model_dir("demo"), device="cpu")
    covariates = [Covariates("F" if i % 2 else "M", 65.0, 30000.0, 1.5e6) for i in range(n)]
    seeds = [subject_seed(7, i) for i in range(n)]
    list(pipeline.generate(covariates[:4], seeds[:4], sampler=SAMPLER["name"], num_inference_steps=SAMPLER["steps"]))
    started = time.perf_counter()
    list(pipeline.generate(covariates, seeds, sampler=SAMPLER["name"], num_inference_steps=SAMPLER["steps"],
                           batch_size=DEFAULT_BATCH_SIZE))  # fmt: skip
    return (time.perf_counter() - started) / n


def cli_sample_seconds_per_subject(n: int = 100) -> float:
    """``brainsynth sample`` as a user runs it (whole process, default flags but the bench's sampler and
    ``--qc none``): the extra seconds of ``n`` subjects over 4, per subject (import and model load cancel)."""
    walls = []
    for count in (4, n):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            subprocess.run(["brainsynth", "sample", "--model", "demo", "--n", str(count), "--seed", "7", "--sampler",
                            SAMPLER["name"], "--steps", str(SAMPLER["steps"]), "--qc", "none", "--out", f"{out}/ds"],
                           check=True, capture_output=True)  # fmt: skip
            walls.append(time.perf_counter() - started)
    return (walls[1] - walls[0]) / (n - 4)


class LatencyProbe:
    """Calls ``GET /v1/cohorts/{id}`` and ``GET /healthz`` in turn every 0.25 s while a cohort runs."""

    def __init__(self, client: BrainSynthClient, cohort_id: str) -> None:
        self.client, self.cohort_id = client, cohort_id
        self.seconds: dict[str, list[float]] = {"status": [], "healthz": []}
        self.errors = Counter[int]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        routes = {"status": f"/v1/cohorts/{self.cohort_id}", "healthz": "/healthz"}
        while not self._stop.wait(0.25):
            for name, path in routes.items():
                started = time.perf_counter()
                code = self.client.http.get(path).status_code
                self.seconds[name].append(time.perf_counter() - started)
                if code >= 500:
                    self.errors[code] += 1

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def p99_ms(self, name: str) -> float:
        values = sorted(self.seconds[name])
        return round(1000 * values[min(len(values) - 1, int(0.99 * len(values)))], 1) if values else float("nan")


def _redis_used(connection: redis.Redis) -> int:
    return int(connection.info("memory")["used_memory"])


def _redis_keys_bytes(connection: redis.Redis, cohort_id: str, before: set[bytes]) -> int:
    """``MEMORY USAGE`` of what the cohort left in Redis: its own keys and the Celery results of its tasks (the
    keys that appeared during its run), read after it finished."""
    total = 0
    for key in connection.scan_iter(count=10_000):
        if cohort_id.encode() in key or (key.startswith(b"celery-task-meta-") and key not in before):
            total += int(connection.memory_usage(key, samples=0) or 0)
    return total


def _page_ms(client: BrainSynthClient, cohort_id: str, n: int) -> float:
    """The slowest of the first page and a middle page, each asked three times."""
    middle = base64.urlsafe_b64encode(f"after:sub-{n // 2:06d}".encode()).decode()
    slowest = 0.0
    for params in ({"page_size": 100}, {"page_size": 100, "page_token": middle}):
        for _ in range(3):
            started = time.perf_counter()
            client.http.get(f"/v1/cohorts/{cohort_id}/subjects", params=params).raise_for_status()
            slowest = max(slowest, time.perf_counter() - started)
    return round(1000 * slowest, 1)


def run_cohort(
    client: BrainSynthClient, connection: redis.Redis, n: int, sampling_s: float, cli_s: float
) -> dict[str, Any]:
    """One cohort of ``n`` subjects through the stack; its row."""
    before = _redis_used(connection)
    results_before = set(connection.scan_iter(match="celery-task-meta-*", count=10_000))
    started = time.perf_counter()
    cohort = client.submit({"model": "demo", "n_subjects": n, "seed": 7, "sampler": SAMPLER, "qc": "none"})
    post_s = time.perf_counter() - started
    all_stored_at = None
    with LatencyProbe(client, cohort["id"]) as probe:
        while True:
            status = client.http.get(f"/v1/cohorts/{cohort['id']}").raise_for_status().json()
            if all_stored_at is None and status["progress"]["done"] == n:
                all_stored_at = time.perf_counter()
            if status["status"] in ("succeeded", "failed", "canceled"):
                break
            time.sleep(0.25)
    finished = time.perf_counter()
    if status["status"] != "succeeded":
        raise RuntimeError(f"the {n}-subject cohort ended {status['status']}: {status.get('error')}")
    wall = finished - started
    used = _redis_used(connection) - before
    return {
        "subjects": n,
        "cohort_id": cohort["id"],
        "post_s": round(post_s, 2),
        "wall_s": round(wall, 1),
        "sampling_s": round(sampling_s * n, 1),
        "service_ms_per_subject": round(1000 * (wall - sampling_s * n) / n, 1),
        "wall_over_sampling": round(wall / (sampling_s * n), 2),
        "wall_over_cli_sample": round(wall / (cli_s * n), 2),
        "finalisation_s": round(finished - (all_stored_at or finished), 2),
        "status_p99_ms": probe.p99_ms("status"),
        "healthz_p99_ms": probe.p99_ms("healthz"),
        "http_5xx": sum(probe.errors.values()),
        "subjects_page_ms": _page_ms(client, cohort["id"], n),
        "redis_used_bytes_per_subject": round(used / n),
        "redis_keys_bytes_per_subject": round(_redis_keys_bytes(connection, cohort["id"], results_before) / n),
    }


def check_largest(stack: LocalStack, client: BrainSynthClient, row: dict[str, Any], out: Path) -> dict[str, Any]:
    """Every subject stored once (one "subject stored" line per participant in the worker's log); the archive
    downloaded in two goes and verified by ``sha256sum -c``."""
    cohort_id, n = row["cohort_id"], row["subjects"]
    stored = Counter()
    for line in (stack.logs / "worker-0.log").read_text().splitlines():
        if '"subject stored"' in line and cohort_id in line:
            stored[json.loads(line)["subject_id"]] += 1
    url = f"/v1/cohorts/{cohort_id}/archive"
    head = client.http.head(url).raise_for_status()
    size, etag = int(head.headers["Content-Length"]), head.headers["ETag"]
    folder = out / "download"
    folder.mkdir(parents=True, exist_ok=True)
    cut = client.http.get(url, headers={"Range": f"bytes=0-{size // 3 - 1}"}).raise_for_status()
    (folder / f"cohort-{cohort_id}.zip.part").write_bytes(cut.content)
    (folder / f"cohort-{cohort_id}.zip.etag").write_text(etag)
    started = time.perf_counter()
    dataset = client.download(cohort_id, folder)
    resumed_s = time.perf_counter() - started
    checked = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=dataset, capture_output=True,
                             text=True)  # fmt: skip
    started = time.perf_counter()
    manifest = client.http.get(url + "/manifest").raise_for_status().text.splitlines()
    manifest_s = time.perf_counter() - started
    return {
        "subjects": n,
        "stored_once": len(stored) == n and set(stored.values()) == {1},
        "archive_bytes": size,
        "resumed_download_s": round(resumed_s, 1),
        "sha256sum_c_passed": checked.returncode == 0,
        "manifest_lines": len(manifest),
        "manifest_s": round(manifest_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--out", type=Path, default=Path("out/bench-scale.json"))
    args = parser.parse_args()
    sampling_s = sampling_seconds_per_subject()
    cli_s = cli_sample_seconds_per_subject()
    print(f"in-process sampling: {1000 * sampling_s:.1f} ms a subject, `brainsynth sample`: {1000 * cli_s:.1f} ms "
          "(demo, dpmpp2m 2 steps)", flush=True)  # fmt: skip
    data = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    stack = LocalStack(data, {"bench": KEY}, port=free_port(), settings={"BRAINSYNTH_DEVICE": "cpu"}, gpus=[])
    rows, check = [], None
    try:
        stack.start()
        assert stack.redis is not None
        connection = redis.Redis.from_url(stack.redis.url)
        with BrainSynthClient(stack.url, KEY) as client:
            client.http.timeout = httpx.Timeout(60.0)
            run_cohort(client, connection, DEFAULT_BATCH_SIZE, sampling_s, cli_s)  # warm-up: the worker loads the model
            for n in args.sizes:
                print(f"cohort of {n} subjects ...", flush=True)
                rows.append(run_cohort(client, connection, n, sampling_s, cli_s))
                print(json.dumps(rows[-1]), flush=True)
            check = check_largest(stack, client, rows[-1], data)
    finally:
        stack.stop()
        shutil.rmtree(data, ignore_errors=True)
    print(format_table([{k: v for k, v in row.items() if k != "cohort_id"} for row in rows]))
    print(json.dumps(check))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"cpus": os.cpu_count(), "sampling_s_per_subject": sampling_s, "cli_sample_s_per_subject": cli_s,
               "rows": rows, "largest": check}  # fmt: skip
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
