"""``make bench`` rows: throughput of 1 and 2 local workers (``brainsynth up --workers N`` as shipped) on one
16-subject demo cohort, in subjects per minute, from submit to succeeded as a client sees it.

On these 2-core machines two CPU workers share the cores (each torch process uses all of them), so the
rows show that the queue spreads a cohort's tasks over workers, not GPU scaling."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from service.client import BrainSynthClient
from service.localstack import free_port
from service.stack import LocalStack

COHORT = {"model": "demo", "n_subjects": 16, "seed": 5, "sampler": {"name": "ddim", "steps": 50}}


def _cohort_minutes(workers: int, say: Callable[[str], None]) -> tuple[float, dict[str, int]]:
    data = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    stack = LocalStack(data, {"bench": "bench-key"}, port=free_port(), workers=workers,
                       settings={"BRAINSYNTH_DEVICE": "cpu"}, gpus=[])  # fmt: skip
    try:
        stack.start()
        with BrainSynthClient(stack.url, "bench-key") as client:
            say(f"scale-out: {workers} worker(s), {COHORT['n_subjects']} subjects")
            started = time.perf_counter()
            cohort = client.submit(COHORT)
            final = client.wait(cohort["id"], timeout=1800)
            seconds = time.perf_counter() - started
            if final["status"] != "succeeded":
                raise RuntimeError(f"the bench cohort ended {final['status']}: {final.get('error')}")
        tasks_per_worker = {}
        for index in range(workers):
            log = (stack.logs / f"worker-{index}.log").read_text()
            tasks_per_worker[f"worker{index}"] = log.count("cohort.generate_subjects") // 2  # received + succeeded
        return seconds, tasks_per_worker
    finally:
        stack.stop()
        shutil.rmtree(data, ignore_errors=True)


def scaleout_rows(say: Callable[[str], None]) -> list[dict]:
    """One row per worker count: wall seconds, subjects per minute, speedup over one worker."""
    rows, base = [], None
    for workers in (1, 2):
        seconds, spread = _cohort_minutes(workers, say)
        base = base or seconds
        rows.append({
            "row": f"scale-out, {COHORT['n_subjects']}-subject demo cohort, {workers} local worker(s), "
                   f"{os.cpu_count()} CPUs (tasks per worker: {', '.join(map(str, spread.values()))})",
            "wall_s": round(seconds, 1),
            "subjects_per_min": round(COHORT["n_subjects"] * 60 / seconds, 1),
            "speedup": round(base / seconds, 2),
        })  # fmt: skip
    return rows
