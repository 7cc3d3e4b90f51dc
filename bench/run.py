"""``make bench``: sampling speed against the bundle's loop, few-step samplers with their fidelity, worker
I/O per subject, archive streaming and the decoder's peak memory (whole vs slab by slab); one table,
printed and written as JSON. All rows are measured in this one run, so ratios hold on a noisy machine.

    python -m bench.run [--preset demo|ukb] [--device cpu|cuda] [--n 16] [--archive-gb 2] [--out out/bench.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.baseline import bundle_loop
from models.catalogue.config import GuidanceConfig
from models.catalogue.registry import resolve_model_dir
from models.cohort.conditioning import Covariates
from models.cohort.design import subject_seed
from models.cohort.nifti import nifti_gz_bytes, to_nifti
from models.inference.execution import Execution
from models.inference.pipeline import BrainLDMPipeline

REPO = Path(__file__).resolve().parents[1]

PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms from /proc)."""

    def __enter__(self) -> PeakRSS:
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.cuda_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None

    @property
    def mib(self) -> float:
        peak = self.cuda_peak if self.cuda_peak is not None else self.peak
        return round(peak / 2**20, 1)


def _covariates(n: int, seed: int, probe_ranges: tuple[tuple[float, float], tuple[float, float]]) -> list[Covariates]:
    rng = np.random.default_rng(seed)
    (v_lo, v_hi), (b_lo, b_hi) = probe_ranges
    return [
        Covariates("F" if i % 2 else "M", float(rng.uniform(44, 82)), float(rng.uniform(v_lo, v_hi)),
                   float(rng.uniform(b_lo, b_hi)))
        for i in range(n)
    ]  # fmt: skip


def _timed(action: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MiB)."""
    with PeakRSS() as memory:
        start = time.perf_counter()
        result = action()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return result, seconds, memory.mib


def _row(name: str, brains: int, seconds: float, mib: float, **extra: Any) -> dict[str, Any]:
    per = seconds / brains
    return {"row": name, "s_per_brain": round(per, 3), "brains_per_hour": round(3600 / per), "peak_mib": mib, **extra}


def sampling_rows(pipeline: BrainLDMPipeline, n: int, probe: Any, say: Callable[[str], None]) -> list[dict]:
    config = pipeline.config
    ranges = (probe.info.ventricular_range_mm3, probe.info.brain_range_mm3) if probe else (
        (config.conditioning.ventricular_volume_mm3.min, config.conditioning.ventricular_volume_mm3.max),
        (config.conditioning.brain_volume_mm3.min, config.conditioning.brain_volume_mm3.max))  # fmt: skip
    covariates = _covariates(n, 1, ranges)
    seeds = [subject_seed(1, i) for i in range(n)]
    from models.cohort.conditioning import normalise

    vectors = [list(normalise(c, config.conditioning)) for c in covariates]
    rows = []
    baseline_n = min(n, 4)
    # The reference every speedup divides: two interleaved rounds of the bundle's loop and the project's sampler
    # at its settings, the faster round of each kept (this machine's timings wander by 10-20 % between runs).
    base_seconds = ours_seconds = float("inf")
    for round_ in (1, 2):
        say(f"baseline: the bundle's loop, batch 1, {baseline_n} brains (round {round_} of 2)")
        baseline, seconds, base_mib = _timed(
            lambda: [bundle_loop(pipeline, vectors[i], seeds[i]) for i in range(baseline_n)]
        )
        base_seconds = min(base_seconds, seconds)
        say(f"project sampler, same settings (round {round_} of 2)")
        ours, seconds, ours_mib = _timed(
            lambda: pipeline(covariates[:baseline_n], seeds[:baseline_n], sampler="ddim", num_inference_steps=50)
        )
        ours_seconds = min(ours_seconds, seconds)
    base_per = base_seconds / baseline_n
    rows.append(_row("bundle loop (baseline), ddim 50, batch 1", baseline_n, base_seconds, base_mib, speedup=1.0))
    difference = max(float(np.abs(b[0, 0].cpu().numpy() - o.volume).max()) for b, o in zip(baseline, ours, strict=True))
    speedup = round(base_seconds / ours_seconds, 2)
    rows.append(
        _row("project sampler, ddim 50, batch 1", baseline_n, ours_seconds, ours_mib, speedup=speedup,
             max_abs_diff_vs_baseline=difference)
    )  # fmt: skip

    def fidelity(samples: list) -> float | None:
        if probe is None:
            return None
        images = torch.from_numpy(np.stack([np.clip(s.volume, 0, 1) for s in samples])[:, None]).float()
        measured = probe.measure(images)[:, 0]
        from models.dataset.qc import pearson_r

        return round(pearson_r(np.array([c.ventricular_volume_mm3 for c in covariates]), measured), 4)

    reference_r = None
    for batch in (2, 4, 8):
        say(f"project sampler, ddim 50, batch {batch}")
        samples, seconds, mib = _timed(
            lambda batch=batch: pipeline(covariates, seeds, sampler="ddim", num_inference_steps=50, batch_size=batch)
        )
        extra: dict[str, Any] = {"speedup": round(base_per / (seconds / n), 2)}
        if batch == 8:
            reference_r = fidelity(samples)
            extra["ventricles_r"] = reference_r
            batch8 = samples
        rows.append(_row(f"project sampler, ddim 50, batch {batch}", n, seconds, mib, **extra))
    # Classifier-free guidance doubles the UNet's batch (both branches in one call), not the decode. A model
    # without condition dropout is timed as if it had it (its cost; its fidelity under guidance means nothing).
    unguided_seconds = next(r["s_per_brain"] for r in rows if r["row"] == "project sampler, ddim 50, batch 8")
    trained_for_guidance = config.guidance is not None
    as_guided = (
        config
        if trained_for_guidance
        else config.model_copy(update={"guidance": GuidanceConfig(condition_dropout=0.1)})
    )
    guided = BrainLDMPipeline(as_guided, pipeline.autoencoder, pipeline.unet, pipeline.device, pipeline.execution)
    for scale in (1.5, 3.0):
        say(f"ddim 50, batch 8, guidance {scale:g}")
        samples, seconds, mib = _timed(
            lambda scale=scale: guided(covariates, seeds, num_inference_steps=50, batch_size=8, guidance=scale)
        )
        extra = {"speedup": round(base_per / (seconds / n), 2),
                 "cost_vs_unguided": round((seconds / n) / unguided_seconds, 2)}  # fmt: skip
        extra["ventricles_r"] = fidelity(samples) if trained_for_guidance else "n/a: not trained for guidance"
        rows.append(_row(f"ddim 50, batch 8, guidance {scale:g}", n, seconds, mib, **extra))
    # bf16 is a GPU feature; on a CPU (slow bf16 kernels) two brains measure its error against float32.
    width = n if pipeline.device.type == "cuda" else 2
    say(f"ddim 50, bf16 autocast, {width} brains, batch {min(width, 8)}")
    reduced = BrainLDMPipeline(config, pipeline.autoencoder, pipeline.unet, pipeline.device, Execution("bf16"))
    samples, seconds, mib = _timed(
        lambda: reduced(covariates[:width], seeds[:width], num_inference_steps=50, batch_size=min(width, 8))
    )
    reference = pipeline(covariates[:width], seeds[:width], num_inference_steps=50, batch_size=min(width, 8))
    error = max(float(np.abs(a.volume - b.volume).max()) for a, b in zip(reference, samples, strict=True))
    rows.append(
        _row(f"ddim 50, batch {min(width, 8)}, bf16 autocast ({pipeline.device.type})", width, seconds, mib,
             speedup=round(base_per / (seconds / width), 2), max_abs_diff_vs_fp32=error)
    )  # fmt: skip

    def few_step_row(runner: BrainLDMPipeline, sampler: str, steps: int, label: str = "") -> None:
        say(f"{sampler} {steps}, batch 8{label}")
        samples, seconds, mib = _timed(
            lambda: runner(covariates, seeds, sampler=sampler, num_inference_steps=steps, batch_size=8)
        )
        r = fidelity(samples)
        extra = {"speedup": round(base_per / (seconds / n), 2), "ventricles_r": r}
        if r is not None and reference_r:
            extra["fidelity_vs_ddim50_percent"] = round(100 * (r - reference_r) / abs(reference_r), 1)
        rows.append(_row(f"{sampler} {steps}, batch 8{label}", n, seconds, mib, **extra))

    for sampler, steps in (("ddim", 25), ("ddim", 10), ("dpmpp2m", 15), ("dpmpp2m", 10), ("dpmpp2m", 5)):
        few_step_row(pipeline, sampler, steps)
    # Last: channels-last converts the shared modules in place.
    for label, execution in (
        ("torch.compile", Execution(compile=True)),
        ("channels-last", Execution(channels_last=True)),
    ):
        say(f"ddim 50, batch 8, {label}")
        faster = BrainLDMPipeline(config, pipeline.autoencoder, pipeline.unet, pipeline.device, execution)
        start = time.perf_counter()
        faster(covariates[:8], seeds[:8], num_inference_steps=1, batch_size=8)  # compiles (or warms up)
        warm_up = time.perf_counter() - start
        samples, seconds, mib = _timed(
            lambda faster=faster: faster(covariates, seeds, num_inference_steps=50, batch_size=8)
        )
        error = max(float(np.abs(a.volume - b.volume).max()) for a, b in zip(batch8, samples, strict=True))
        rows.append(_row(f"ddim 50, batch 8, {label}", n, seconds, mib, speedup=round(base_per / (seconds / n), 2),
                         max_abs_diff_vs_fp32=error, warm_up_s=round(warm_up, 1)))  # fmt: skip
    few_step_row(faster, "dpmpp2m", 10, ", channels-last")
    return rows


def _ukb_sized(volume: np.ndarray) -> np.ndarray:
    """A generated volume upsampled to the paper's 160x224x160 grid (for realistic gzip costs at full size)."""
    tensor = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    return torch.nn.functional.interpolate(tensor, size=(160, 224, 160), mode="trilinear")[0, 0].numpy()


def io_rows(pipeline: BrainLDMPipeline, say: Callable[[str], None], task_row: bool = True) -> list[dict]:
    """Per-subject NIfTI encode + gzip (levels, isal) at the model's size and at full size, upload to a local
    SeaweedFS, and a real worker task (``worker.runner.generate_subjects``) timed against sampling alone."""
    from jobs.contract import SubjectBatch, SubjectJob
    from jobs.storage import ObjectStore
    from service.localstack import start_s3
    from worker.config import WorkerSettings
    from worker.runner import generate_subjects
    from worker.writer import BackgroundWriter

    volume = pipeline([Covariates("F", 65, 30000, 1.5e6)], [3], num_inference_steps=2)[0].volume
    rows: list[dict] = []

    def per_subject(label: str, action: Callable[[], Any], size: int, repeats: int = 3) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            out = action()
        seconds = (time.perf_counter() - start) / repeats
        ratio = round(size / len(out), 2) if isinstance(out, bytes) else None
        rows.append({"row": label, "s_per_subject": round(seconds, 4), "bytes_in": size, "gzip_ratio": ratio})
        return seconds

    for grid, data in (("model grid", volume), ("160x224x160", _ukb_sized(volume))):
        image = to_nifti(data, np.asarray(pipeline.config.affine), "float32")
        raw = image.to_bytes()
        per_subject(f"NIfTI encode + gzip level 1, {grid} (as shipped)", lambda image=image: nifti_gz_bytes(image),
                    len(raw))  # fmt: skip
        for level in (6, 9):
            per_subject(f"gzip level {level} (stdlib), {grid}", lambda level=level, raw=raw:
                        gzip.compress(raw, level, mtime=0), len(raw))  # fmt: skip
        try:
            from isal import igzip

            per_subject(f"gzip level 2 (isal), {grid}", lambda raw=raw: igzip.compress(raw, 2, mtime=0), len(raw))
        except ImportError:
            rows.append({"row": "gzip (isal)", "s_per_subject": "not measured: isal not installed"})
    full_size = to_nifti(_ukb_sized(volume), np.asarray(pipeline.config.affine), "float32")
    count = 4
    for threads in sorted({1, 2, min(4, os.cpu_count() or 1)}):
        start = time.perf_counter()
        with BackgroundWriter(nifti_gz_bytes, depth=count, threads=threads) as writer:
            for _ in range(count):
                writer.submit(full_size)
        rows.append({"row": f"background writer, {threads} thread(s): encode + gzip {count} subjects, 160x224x160",
                     "s_per_subject": round((time.perf_counter() - start) / count, 4)})  # fmt: skip
    payload = nifti_gz_bytes(to_nifti(volume, np.asarray(pipeline.config.affine), "float32"))
    with tempfile.TemporaryDirectory() as run:
        server = start_s3(Path(run), "bench", "bench-secret-key")
        try:
            store = ObjectStore(server.endpoint, "bench", "bench-secret-key", "bench")
            store.ensure_bucket()
            store.put_bytes("warm-up", payload)
            counter = iter(range(10**6))
            per_subject("upload to local S3 (SeaweedFS), model grid",
                        lambda: store.put_bytes(f"subject-{next(counter)}", payload, "application/gzip"),
                        len(payload), repeats=5)  # fmt: skip
            width = 4
            if not task_row:
                rows.append({"row": "worker task", "s_per_subject": "not measured: full size on a CPU takes hours"})
                return rows
            say("a worker task of 4 subjects, against sampling alone")
            covariates = [Covariates("F", 65, 30000, 1.5e6)] * width
            seeds = [subject_seed(5, i) for i in range(width)]
            _, sampling, _ = _timed(lambda: pipeline(covariates, seeds, num_inference_steps=50, batch_size=width))
            batch = SubjectBatch(subjects=[
                SubjectJob(tenant="bench", cohort_id="bench", model="demo", participant_id=f"sub-{i + 1:06d}",
                           sex="F", age=65, ventricular_volume_mm3=30000, brain_volume_mm3=1.5e6, seed=seeds[i])
                for i in range(width)])  # fmt: skip
            threads = WorkerSettings.model_fields["writer_threads"].default
            _, task, _ = _timed(lambda: generate_subjects(batch, store, lambda _name: pipeline, threads))
        finally:
            server.stop()
    rows.append({"row": f"worker task, {width} subjects (sample + background encode/upload)",
                 "s_per_subject": round(task / width, 4), "sampling_alone_s_per_subject": round(sampling / width, 4),
                 "sampling_share_percent": round(100 * sampling / task, 1)})  # fmt: skip
    say("I/O measured")
    return rows


def archive_rows(gigabytes: float, say: Callable[[str], None]) -> list[dict]:
    """Stream a >= 2 GB cohort from a local SeaweedFS through the archive writer (the route's code path)."""
    from jobs.storage import ObjectStore
    from service.localstack import start_s3

    object_mib = 16
    count = max(1, int(gigabytes * 1024 / object_mib))
    blob = np.random.default_rng(0).integers(0, 256, object_mib * 2**20, dtype=np.uint8).tobytes()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as run:
        server = start_s3(Path(run), "bench", "bench-secret-key")
        try:
            store = ObjectStore(server.endpoint, "bench", "bench-secret-key", "bench")
            store.ensure_bucket()
            say(f"uploading {count} x {object_mib} MiB for the archive")
            for index in range(count):
                store.put_bytes(f"cohort/sub-{index:06d}.nii.gz", blob, "application/gzip")
            crc = zlib.crc32(blob)
            del blob
            # Streamed in a fresh process that imports what the API does (no torch), so its peak RSS is the
            # API's cost of an archive, not this process's torch and model.
            code = (
                "import json, sys, time\n"
                "import zlib\n"
                "from service.archive import ArchiveEntry, ZipLayout\n"
                "from jobs.storage import ObjectStore\n"
                "store = ObjectStore(sys.argv[1], 'bench', 'bench-secret-key', 'bench')\n"
                "objects = store.list_objects('cohort/')\n"
                "crc = int(sys.argv[2])  # every object holds the same bytes: their CRC-32, as the index records it\n"
                "layout = ZipLayout([ArchiveEntry(k, n, crc, k) for k, n in objects])\n"
                "read = lambda key, offset, length: store.stream(key, offset=offset, length=length)\n"
                "start, total = time.perf_counter(), 0\n"
                "for block in layout.read(0, layout.size, read):\n"
                "    total += len(block)\n"
                "seconds = time.perf_counter() - start\n"
                # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked (torch-sized) parent.
                "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
                "peak = int(status.split()[0]) / 1024\n"
                "print(json.dumps({'bytes': total, 'seconds': seconds, 'peak_rss_mib': peak}))\n"
            )
            result = subprocess.run(
                [sys.executable, "-c", code, server.endpoint, str(crc)], capture_output=True, text=True, check=True
            )
            measured = json.loads(result.stdout.strip().splitlines()[-1])
        finally:
            server.stop()
    say("archive measured")
    total, seconds = measured["bytes"], measured["seconds"]
    return [{"row": f"archive: ZIP64 stream of {total / 1e9:.2f} GB from S3 (a process without torch, as the API)",
             "mb_per_s": round(total / 1e6 / seconds), "peak_rss_mib": round(measured["peak_rss_mib"], 1)}]  # fmt: skip


def decode_rows(device: torch.device, latent: str, say: Callable[[str], None]) -> list[dict]:
    """The ukb decoder's peak memory, whole volume against slab by slab (each in a fresh process)."""
    shape = "x".join(str(8 * int(n)) for n in latent.split("x"))
    variants = [("whole volume", []), ("slab by slab, 8 rows", ["--slab", "8"])]
    if device.type == "cuda":
        variants.append(("slab by slab, 8 rows, host offload", ["--slab", "8", "--offload"]))
    rows = []
    for label, extra in variants:
        say(f"decode memory: {label} at {shape}")
        command = [sys.executable, "-m", "bench.decode_memory", "--latent", latent, "--device", str(device), *extra]
        measured = json.loads(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
        row = {"row": f"decode {shape}, ukb decoder (random weights): {label}",
               "s_per_brain": round(measured["seconds"], 2), "peak_mib": round(measured["peak_mib"], 1)}  # fmt: skip
        if "max_abs_diff" in measured:
            row["max_abs_diff_vs_whole"] = measured["max_abs_diff"]
        rows.append(row)
    return rows


def gpu_rows(device: torch.device) -> list[dict]:
    rows = [{"row": "CUDA graphs", "s_per_brain": "not implemented: needs a GPU to develop and check against"}]
    if device.type == "cuda":
        return rows
    reason = "not measured: no GPU on this machine (this task was lent no GPU machine)"
    return [{"row": f"GPU: {what}", "s_per_brain": reason} for what in (
        "ukb preset, ddim 50, bf16 autocast (target <= 0.25 s/brain on an H100)",
        "torch.compile and channels-last on a GPU", "slab decode at full size on a 24 GB card")] + rows  # fmt: skip


def whole_process_rows(n: int, steps: int, say: Callable[[str], None], rounds: int = 2) -> list[dict]:
    """Wall time of whole processes as a user starts them (imports, loading, sampling, NIfTI writing):
    ``brainsynth sample`` with default flags against the bundle-like script (:mod:`bench.bundle_process`),
    interleaved ``rounds`` times in the same run; the faster round of each is kept."""
    import shutil
    import subprocess
    import sys
    import tempfile

    commands = {
        "brainsynth sample (default flags)": [str(Path(sys.executable).parent / "brainsynth"), "sample", "--model",
                                              "demo", "--n", str(n), "--steps", str(steps), "--seed", "1"],
        "bundle-like script (batch 1, fp32, bundle loop, nibabel save)": [
            sys.executable, "-m", "bench.bundle_process", "--model", "demo", "--n", str(n), "--steps", str(steps)],
    }  # fmt: skip
    best: dict[str, float] = {}
    for round_ in range(rounds):
        for label, command in commands.items():
            out = Path(tempfile.mkdtemp(prefix="bench-process-")) / "out"
            say(f"whole process, round {round_ + 1}: {label}")
            started = time.perf_counter()
            subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, cwd=REPO)
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - started)
            shutil.rmtree(out.parent)
    bundle = best["bundle-like script (batch 1, fp32, bundle loop, nibabel save)"]
    return [
        {"row": f"whole process, {n} subjects, ddim {steps}: {label}", "wall_s": round(seconds, 2),
         "speedup": round(bundle / seconds, 2)}
        for label, seconds in best.items()
    ]  # fmt: skip


def format_table(rows: list[dict]) -> str:
    columns = ["row", "s_per_brain", "brains_per_hour", "wall_s", "speedup", "peak_mib", "ventricles_r",
               "fidelity_vs_ddim50_percent", "max_abs_diff_vs_baseline", "max_abs_diff_vs_fp32",
               "max_abs_diff_vs_whole", "warm_up_s", "s_per_subject", "gzip_ratio", "sampling_alone_s_per_subject",
               "sampling_share_percent", "mb_per_s", "peak_rss_mib", "subjects_per_min"]  # fmt: skip
    used = [c for c in columns if any(c in r for r in rows)]
    for r in rows:  # a column no list above names is shown too, after them
        used += [c for c in r if c not in used and c not in columns]
    lines = ["| " + " | ".join(used) + " |", "|" + "---|" * len(used)]
    for r in rows:
        cells = []
        for c in used:
            value = r.get(c, "")
            value = "" if value is None else value
            cells.append(f"{value:.2e}" if c.startswith("max_abs_diff") and value != "" else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("demo", "ukb"), default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=16, help="subjects per batched/fast-sampler row (default 16)")
    parser.add_argument("--archive-gb", type=float, default=2.0)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=("sampling", "process", "io", "archive", "decode", "scaleout")
    )
    parser.add_argument(
        "--decode-latent", help="latent grid of the decode-memory rows (default: 20x28x20 on cuda, 10x14x10 on cpu)"
    )
    parser.add_argument("--out", type=Path, default=Path("out/bench.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    say = lambda message: print(f"bench: {message}", flush=True)  # noqa: E731
    if args.preset == "demo":
        model_dir = resolve_model_dir("demo")
        pipeline = BrainLDMPipeline.from_dir(model_dir, device=args.device)
    else:  # the exact ukb architecture with random weights unless imported ones exist: speed only
        from models.catalogue.networks import build_autoencoder, build_unet
        from models.catalogue.presets import ukb
        from models.inference.pipeline import resolve_device

        config = ukb()
        pipeline = BrainLDMPipeline(config, build_autoencoder(config), build_unet(config), resolve_device(args.device))
    probe = None
    if args.preset == "demo":
        from models.evaluation.volumes import VolumeProbe

        try:
            probe = VolumeProbe.load(model_dir)
        except Exception as err:  # reported in the table: fidelity columns stay empty
            say(f"no volume probe ({err}): fidelity not measured")
    rows: list[dict] = []
    if "sampling" not in args.skip:
        rows += sampling_rows(pipeline, args.n, probe, say)
    if "process" not in args.skip and args.preset == "demo":
        rows += whole_process_rows(8, 20, say)
    if "io" not in args.skip:
        rows += io_rows(pipeline, say, task_row=args.preset == "demo" or pipeline.device.type == "cuda")
    if "archive" not in args.skip:
        rows += archive_rows(args.archive_gb, say)
    if "decode" not in args.skip:
        latent = args.decode_latent or ("20x28x20" if pipeline.device.type == "cuda" else "10x14x10")
        rows += decode_rows(pipeline.device, latent, say)
    if "scaleout" not in args.skip and args.preset == "demo":
        from bench.scaleout import scaleout_rows

        rows += scaleout_rows(say)
    rows += gpu_rows(pipeline.device)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads, device {pipeline.device}"  # fmt: skip
    table = format_table(rows)
    print(f"\nBrainSynth benchmark: preset {args.preset}, {machine}\n")
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"preset": args.preset, "machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
