"""The fault suite (``make chaos``): the whole local stack as shipped, disturbed while it works.

``brainsynth up`` runs exactly as a user starts it (shipped defaults: demo model, one worker, 30 s visibility
timeout renewed by heartbeats, 120 s storage retries), then the same 20-subject demo cohort (fixed seed) is
submitted once undisturbed, as the reference, and once per disturbance:

* the worker SIGKILLed three times at different moments (``up`` restarts it);
* Redis stopped with SIGTERM once (``up`` restarts it on its AOF);
* the S3 server frozen with SIGSTOP for 30 s, then SIGCONT;
* the API stopped with SIGTERM once (``up`` restarts it).

``up`` also runs one SAMSEG measuring worker (``--measure-workers 1``); a one-subject ``qc: samseg`` cohort has
its measuring worker SIGKILLed mid-SAMSEG: the subject must be measured once (one completed SAMSEG run), its
measuring task delivered again within 60 s of the kill (the worker's last heartbeat), the cohort succeed.

Each run reports subjects stored, unique subjects, subjects byte-identical to the reference, duplicate
writes (a subject written by two tasks, from the workers' logs), wall time against the reference and the
longest stall (seconds without progress). A last table holds ``/healthz`` latency while 100 event streams
are held and 200 POSTs arrive at once. A last row (:mod:`bench.netns`, skipped with its reason where network
namespaces are not allowed) runs two worker hosts in their own network namespaces and cuts one off for 45 s
mid-task. Numbers, not assertions; ``chaos.json`` keeps them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import redis

from bench import netns
from service.localstack import free_port

REPO = Path(__file__).resolve().parents[1]
REQUEST = {"model": "demo", "n_subjects": 20, "seed": 2026, "name": "chaos"}
MEASURED_REQUEST = {"model": "demo", "n_subjects": 1, "seed": 2027, "name": "chaos measuring", "qc": "samseg"}


def _children(pid: int) -> dict[int, str]:
    """Descendants of ``pid``: pid -> command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    out = {}
    for child in found:
        try:
            out[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return out


@dataclass
class Run:
    name: str
    stored: int
    unique: int
    identical: int
    duplicates: int
    wall_s: float
    longest_stall_s: float
    status: str


class Stack:
    """``brainsynth up`` as a subprocess, with handles on its children."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = secrets.token_urlsafe(18)
        keys = root / "keys.txt"
        keys.write_text(f"chaos={self.key}\n")
        keys.chmod(0o600)
        self.data = root / "data"
        command = [sys.executable, "-m", "brainsynth.cli", "up", "--port", str(self.port), "--data-dir",
                   str(self.data), "--api-key-file", str(keys), "--measure-workers", "1"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = open(root / "up.log", "wb")  # noqa: SIM115 - closed in stop()
        self.up = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        self.wait_ready(180)

    def pid_of(self, kind: str) -> int:
        marks = {"worker": "worker.celery_app", "measure": "worker.measure_app", "api": "uvicorn",
                 "redis": "redis-server"}  # fmt: skip
        for pid, cmd in _children(self.up.pid).items():
            if (kind in marks and marks[kind] in cmd) or (kind == "s3" and cmd.split(" ", 1)[0].endswith("weed")):
                return pid
        raise RuntimeError(f"no {kind} process under brainsynth up")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.up.poll() is not None:
                raise RuntimeError(f"brainsynth up exited; see {self.root / 'up.log'}")
            try:
                if httpx.get(self.url + "/readyz", timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"not ready after {timeout:.0f} s; see {self.root / 'up.log'}")

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """An API call that rides out an API restart (connection errors retried for a minute)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        self.http.close()
        if self.up.poll() is None:
            self.up.send_signal(signal.SIGINT)
            try:
                self.up.wait(120)
            except subprocess.TimeoutExpired:
                print("brainsynth up did not stop in 120 s: killing its process group", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):  # nothing of the stack outlives the suite
            os.killpg(self.up.pid, signal.SIGKILL)
        self.log.close()


def _status(stack: Stack, cohort_id: str) -> dict:
    while True:
        response = stack.request("GET", f"/v1/cohorts/{cohort_id}")
        if response.status_code == 200:
            return response.json()
        time.sleep(0.5)  # 503 while Redis restarts


def _run(stack: Stack, name: str, disturb: Callable[[Stack, Callable[[], int]], None] | None) -> tuple[dict, str]:
    """Submit the request, disturb it on a thread, watch progress; returns (final status, cohort id)."""
    cohort = stack.request("POST", "/v1/cohorts", json=REQUEST).raise_for_status().json()
    cohort_id = cohort["id"]
    progress = {"done": 0}
    started = time.monotonic()
    last_change, longest = started, 0.0
    thread = None
    if disturb is not None:
        thread = threading.Thread(target=disturb, args=(stack, lambda: progress["done"]), daemon=True)
        thread.start()
    while True:
        status = _status(stack, cohort_id)
        now = time.monotonic()
        if status["progress"]["done"] != progress["done"]:
            progress["done"] = status["progress"]["done"]
            last_change = now
        longest = max(longest, now - last_change)
        if status["status"] in ("succeeded", "failed", "canceled"):
            break
        if now - started > 1800:
            break
        time.sleep(0.5)
    if thread is not None:
        thread.join(120)
    status["wall_s"] = time.monotonic() - started
    status["longest_stall_s"] = longest
    print(f"  {name}: {status['status']} {status['progress']} in {status['wall_s']:.0f} s", file=sys.stderr)
    return status, cohort_id


def _niftis(stack: Stack, cohort_id: str) -> dict[str, bytes]:
    deadline = time.monotonic() + 120
    while True:
        response = stack.request("GET", f"/v1/cohorts/{cohort_id}/archive")
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    if response.status_code != 200:
        return {}
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        return {n.split("/")[1]: bundle.read(n) for n in bundle.namelist() if n.endswith("_T1w.nii.gz")}


def _duplicate_writes(stack: Stack, cohort_id: str) -> int:
    """Subjects written more than once: the workers' ``subject stored`` log lines (JSON) of this cohort."""
    counts: dict[str, int] = {}
    for log in (stack.data / "logs").glob("worker-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("message") == "subject stored" and entry.get("cohort_id") == cohort_id:
                counts[entry["subject_id"]] = counts.get(entry["subject_id"], 0) + 1
    return sum(n - 1 for n in counts.values() if n > 1)


def _wait_done(progress: Callable[[], int], at_least: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while progress() < at_least and time.monotonic() < deadline:
        time.sleep(0.1)


def _broker(stack: Stack) -> redis.Redis:
    config = (stack.data / "redis" / "redis.conf").read_text().splitlines()
    port = int(next(line for line in config if line.startswith("port ")).split()[1])
    password = json.loads((stack.data / "s3-credentials.json").read_text())["redis_password"]
    return redis.Redis(port=port, password=password, socket_timeout=2)


def _kill_worker_three_times(stack: Stack, progress: Callable[[], int]) -> None:
    """SIGKILL the worker mid-task (its message unacknowledged, half a task in) at three points of the cohort."""
    broker = _broker(stack)
    for at_least in (0, 8, 16):
        _wait_done(progress, at_least)
        while not broker.hlen("unacked"):
            time.sleep(0.05)
        time.sleep(1.0)  # a task takes ~2.2 s here: this lands mid-sampling
        os.kill(stack.pid_of("worker"), signal.SIGKILL)
        time.sleep(5)  # up restarts it within a second or two


def _restart_redis(stack: Stack, progress: Callable[[], int]) -> None:
    _wait_done(progress, 4)
    time.sleep(1.0)
    os.kill(stack.pid_of("redis"), signal.SIGTERM)


def _freeze_s3(stack: Stack, progress: Callable[[], int]) -> None:
    _wait_done(progress, 4)
    time.sleep(1.0)
    pid = stack.pid_of("s3")
    os.kill(pid, signal.SIGSTOP)
    time.sleep(30)
    os.kill(pid, signal.SIGCONT)


def _restart_api(stack: Stack, progress: Callable[[], int]) -> None:
    _wait_done(progress, 4)
    time.sleep(1.0)
    os.kill(stack.pid_of("api"), signal.SIGTERM)


DISTURBANCES = {
    "worker SIGKILL x3": (_kill_worker_three_times, 0.0),
    "Redis restarted": (_restart_redis, 0.0),
    "S3 frozen 30 s": (_freeze_s3, 30.0),
    "API restarted": (_restart_api, 0.0),
}


class HeldStreams:
    """``count`` clients holding one cohort's event stream open, and one client polling ``/healthz`` every
    ``interval`` s, on threads until :meth:`close` (the cohort reaching a final state also ends the streams).
    ``opened`` holds each stream's HTTP status, ``health`` each health check's (status, seconds)."""

    def __init__(self, url: str, api_key: str, cohort_id: str, count: int = 100, interval: float = 0.02) -> None:
        self.url, self.api_key, self.cohort_id, self.interval = url, api_key, cohort_id, interval
        self.halt = threading.Event()
        self.opened: list[int] = []
        self.health: list[tuple[int, float]] = []
        self.threads = [threading.Thread(target=self._hold, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(self.opened) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        poller = threading.Thread(target=self._poll, daemon=True)
        poller.start()
        self.threads.append(poller)

    def _hold(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with (
            httpx.Client(base_url=self.url, headers=headers, timeout=120) as http,
            http.stream("GET", f"/v1/cohorts/{self.cohort_id}/events") as stream,
        ):
            self.opened.append(stream.status_code)
            for _ in stream.iter_lines():
                if self.halt.is_set():
                    return

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.halt.is_set():
                started = time.perf_counter()
                status = http.get("/healthz").status_code
                self.health.append((status, time.perf_counter() - started))
                time.sleep(self.interval)

    def close(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(60)


def _load(stack: Stack) -> dict[str, float]:
    """/healthz latency while 100 event streams are held and 200 POSTs arrive at once."""
    cohort = stack.request("POST", "/v1/cohorts", json={**REQUEST, "seed": 1}).raise_for_status().json()
    streams = HeldStreams(stack.url, stack.key, cohort["id"])
    time.sleep(2)

    def post(i: int) -> int:
        """One of the flood's POSTs; 0 for a transport error on the client's side (a shared pool under 200
        threads once read a closed socket: counted, not fatal; the server's answers are in its access log)."""
        try:
            return stack.http.post("/v1/cohorts", json={**REQUEST, "seed": 10 + i}).status_code
        except httpx.TransportError:
            return 0

    with ThreadPoolExecutor(200) as pool:
        codes = list(pool.map(post, range(200)))
    time.sleep(2)
    stack.request("POST", f"/v1/cohorts/{cohort['id']}/cancel")
    streams.close()
    for response in stack.request("GET", "/v1/cohorts", params={"page_size": 100}).json()["cohorts"]:
        if response["status"] in ("queued", "running"):
            stack.request("POST", f"/v1/cohorts/{response['id']}/cancel")
    latencies = [seconds for _, seconds in streams.health]
    ordered = sorted(latencies)
    return {
        "healthz_calls": len(ordered),
        "healthz_p50_ms": 1000 * ordered[len(ordered) // 2],
        "healthz_p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "healthz_max_ms": 1000 * ordered[-1],
        "posts_202": codes.count(202),
        "posts_429": codes.count(429),
        "posts_client_transport_error": codes.count(0),
        "posts_other": len(codes) - codes.count(202) - codes.count(429) - codes.count(0),
    }


def _log_times(stack: Stack, pattern: str, message: str) -> list[float]:
    """Times (epoch s) of the log lines of ``pattern`` files whose JSON message starts with ``message``."""
    from datetime import datetime

    times = []
    for log in (stack.data / "logs").glob(pattern):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and (entry := json.loads(line)).get("message", "").startswith(message):
                times.append(datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp())
    return sorted(times)


def _kill_measuring_worker(stack: Stack) -> dict[str, float | int | str]:
    """A one-subject SAMSEG cohort whose measuring worker is SIGKILLed 20 s into SAMSEG (``up`` restarts it)."""
    cohort = stack.request("POST", "/v1/cohorts", json=MEASURED_REQUEST).raise_for_status().json()
    started = time.monotonic()
    while not any("run_samseg" in cmd for cmd in _children(stack.up.pid).values()):
        if time.monotonic() - started > 600:
            raise RuntimeError("SAMSEG never started; see the measure-*.log files")
        time.sleep(0.5)
    time.sleep(20)
    killed_at = time.time()
    os.kill(stack.pid_of("measure"), signal.SIGKILL)
    while (status := _status(stack, cohort["id"]))["status"] not in ("succeeded", "failed", "canceled"):
        if time.monotonic() - started > 1800:
            break
        time.sleep(1)
    received = [t for t in _log_times(stack, "measure-*.log", "Task cohort.measure_subject") if t > killed_at]
    orphans = sum("run_samseg" in cmd for cmd in _children(stack.up.pid).values())
    return {
        "status": status["status"],
        "measured": f"{status['progress'].get('measured', 0)}/{status['progress']['total']}",
        "samseg_runs_completed": len(_log_times(stack, "measure-*.log", "SAMSEG measured")),
        "redelivered_after_kill_s": round(received[0] - killed_at, 1) if received else -1.0,
        "samseg_left_running": orphans,
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/chaos"), help="stack data, logs and chaos.json")
    parser.add_argument("--only", nargs="*", choices=list(DISTURBANCES), help="run only these disturbances")
    parser.add_argument("--no-netns", action="store_true", help="skip the worker-host cut (network namespaces)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    print(f"starting brainsynth up in {args.out} (shipped defaults) ...", file=sys.stderr)
    stack = Stack(args.out)
    runs: list[Run] = []
    try:
        reference_status, reference_id = _run(stack, "reference", None)
        reference = _niftis(stack, reference_id)
        ref_wall = reference_status["wall_s"]
        chosen = {k: v for k, v in DISTURBANCES.items() if not args.only or k in args.only}
        for name, (disturb, _outage) in {"undisturbed (reference)": (None, 0.0), **chosen}.items():
            if disturb is None:
                status, cohort_id, niftis = reference_status, reference_id, reference
            else:
                status, cohort_id = _run(stack, name, disturb)
                stack.wait_ready(120)
                niftis = _niftis(stack, cohort_id)
            runs.append(
                Run(
                    name=name,
                    stored=status["progress"]["done"],
                    unique=len(niftis),
                    identical=sum(1 for k, v in niftis.items() if reference.get(k) == v),
                    duplicates=_duplicate_writes(stack, cohort_id),
                    wall_s=round(status["wall_s"], 1),
                    longest_stall_s=round(status["longest_stall_s"], 1),
                    status=status["status"],
                )
            )
        load = _load(stack)
        measuring = _kill_measuring_worker(stack)
    finally:
        stack.stop()
    host_cut = {"skipped": "--no-netns"} if args.no_netns else netns.run(args.out / "netns")
    total = REQUEST["n_subjects"]
    print(f"\nmake chaos: {total}-subject demo cohort, seed {REQUEST['seed']}, `brainsynth up` as shipped\n")
    header = "| run | status | stored | unique | identical | duplicates | wall s (x ref) | longest stall s |"
    print(header)
    print("|" + "---|" * 8)
    for run in runs:
        ratio = run.wall_s / ref_wall if ref_wall else 0.0
        print(f"| {run.name} | {run.status} | {run.stored}/{total} | {run.unique} | {run.identical} | "
              f"{run.duplicates} | {run.wall_s:.0f} ({ratio:.2f}) | {run.longest_stall_s:.0f} |")  # fmt: skip
    print("\n| load: 100 held event streams + 200 simultaneous POSTs | value |\n|---|---|")
    for key, value in load.items():
        print(f"| {key} | {value:.0f} |" if isinstance(value, float) else f"| {key} | {value} |")
    print("\n| measuring worker SIGKILLed mid-SAMSEG (1-subject qc samseg cohort) | value |\n|---|---|")
    for key, value in measuring.items():
        print(f"| {key} | {value} |")
    print("\n| worker host cut off: its own network namespace, link down 45 s mid-task | value |\n|---|---|")
    for key, value in host_cut.items():
        print(f"| {key} | {value} |")
    document = {"runs": [asdict(r) for r in runs], "load": load, "measuring": measuring, "host_cut": host_cut}
    (args.out / "chaos.json").write_text(json.dumps(document, indent=2))
    goals = all(r.stored == total and r.identical == total and r.duplicates == 0 for r in runs)
    outages = {name: outage for name, (_, outage) in DISTURBANCES.items()}
    stalls = all(r.longest_stall_s <= 60 + outages.get(r.name, 0.0) for r in runs)
    measured_once = measuring["status"] == "succeeded" and measuring["samseg_runs_completed"] == 1
    redelivered = 0 <= float(measuring["redelivered_after_kill_s"]) <= 60  # type: ignore[arg-type]
    cut_ok = "skipped" in host_cut or (
        host_cut["status"] == "succeeded" and host_cut["identical_to_reference"] == total
        and host_cut["identical_after_late_writes"] and host_cut["within_budget"]
    )  # fmt: skip
    verdict = "met" if goals and stalls and measured_once and redelivered and cut_ok else "MISSED"
    print(f"\ngoals (20/20 identical, 0 duplicates, no stall over 60 s + outage; the killed measuring worker's "
          f"subject measured once, again within 60 s; the cut-off host's cohort identical, within 60 s of the cut "
          f"plus its time): {verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
