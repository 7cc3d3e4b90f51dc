"""A ``make chaos`` row: worker hosts on their own network, one cut off mid-cohort for longer than the visibility
timeout, then back.

Each of two generating workers runs in its own network namespace (``ip netns``), joined to this host by a veth pair
on a bridge (``10.77.0.0/24``); they reach Redis and S3 only through the bridge (a TCP relay on the host's bridge
address forwards to the servers, which stay on loopback), as a worker on another machine would. Redis, S3 and the
API run as ``brainsynth up`` starts them, with the shipped settings (visibility timeout 30 s, storage retries
120 s). The same 20-subject demo cohort runs once undisturbed (the reference) and once with worker 0's link taken
down 45 s while it holds a task, then up again. The cut-off worker keeps running and, once its link is back, may
write what it was making after its lease is gone; every subject must end stored once with the reference's bytes,
and the cohort must finish within 60 s of the cut plus its undisturbed time.

Needs root and network namespaces; elsewhere the row says why it was skipped.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from service.localstack import free_port
from service.stack import LocalStack, start_worker_process, worker_command

BRIDGE = "bsbr0"
HOST_IP = "10.77.0.1"
REQUEST = {"model": "demo", "n_subjects": 20, "seed": 2026, "name": "chaos netns"}
CUT_S = 45.0
WORKERS = 2


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run the row (no ``ip``, not root, namespaces refused), or ``None``."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    try:
        _ip("netns", "add", "bs-probe")
        _ip("netns", "del", "bs-probe")
    except subprocess.CalledProcessError as err:
        return f"network namespaces are not allowed here ({err.stderr.decode().strip() or err})"
    return None


class Network:
    """A bridge on this host and one namespace per worker host, each with a veth pair and an address."""

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for i in range(hosts):
            ns, outside, inside = self.namespace(i), f"vbs{i}h", f"vbs{i}n"
            _ip("netns", "add", ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", BRIDGE)
            _ip("link", "set", outside, "up")
            _ip("-n", ns, "addr", "add", f"10.77.0.{10 + i}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def namespace(i: int) -> str:
        return f"bs-worker{i}"

    def cut(self, i: int) -> None:
        """Take worker host ``i``'s link down: its packets go nowhere, its connections hang (no reset)."""
        _ip("link", "set", f"vbs{i}h", "down")

    def restore(self, i: int) -> None:
        _ip("link", "set", f"vbs{i}h", "up")

    def remove(self) -> None:
        for i in range(self.hosts):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", self.namespace(i))
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", f"vbs{i}h")
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", BRIDGE)


class Relay:
    """Forwards TCP connections from ``HOST_IP:port`` to ``127.0.0.1:port`` (the bridge's way to a server)."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server((HOST_IP, port))
        self.port = port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.port))
            except OSError:
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(1 << 16):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def _cohort(http: httpx.Client, on_running: Any = None) -> tuple[dict, float]:
    """Submit the request and wait for a final status (returned with the seconds it took); ``on_running`` is
    called once, on a thread, at once, and is waited for after."""
    started = time.monotonic()
    cohort = http.post("/v1/cohorts", json=REQUEST).raise_for_status().json()
    thread = None
    if on_running is not None:
        thread = threading.Thread(target=on_running, args=(cohort["id"],), daemon=True)
        thread.start()
    while True:
        status = http.get(f"/v1/cohorts/{cohort['id']}").raise_for_status().json()
        if status["status"] in ("succeeded", "failed", "canceled") or time.monotonic() - started > 1200:
            break
        time.sleep(0.5)
    seconds = time.monotonic() - started
    if thread is not None:
        thread.join(300)
    return status, seconds


def _niftis(http: httpx.Client, cohort_id: str) -> dict[str, bytes]:
    response = http.get(f"/v1/cohorts/{cohort_id}/archive")
    if response.status_code != 200:
        return {}
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        return {n.split("/")[1]: bundle.read(n) for n in bundle.namelist() if n.endswith("_T1w.nii.gz")}


def _writes(logs: Path, cohort_id: str) -> dict[str, list[str]]:
    """participant -> the workers that logged storing it, for one cohort."""
    writes: dict[str, list[str]] = {}
    for log in sorted(logs.glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"subject stored"' in line:
                entry = json.loads(line)
                if entry.get("cohort_id") == cohort_id:
                    writes.setdefault(entry["subject_id"], []).append(log.stem)
    return writes


def _late_writes(log: Path, cohort_id: str, after: float) -> int:
    """Subjects of ``cohort_id`` the worker logged storing after the wall-clock time ``after``."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"subject stored"' in line:
            entry = json.loads(line)
            when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
            count += entry.get("cohort_id") == cohort_id and when >= after
    return count


def _holds_a_task(log: Path, since: int) -> bool:
    """Whether the worker logged receiving a generation task after byte ``since`` of its log."""
    with open(log, "rb") as handle:
        handle.seek(since)
        return b"cohort.generate_subjects[" in handle.read()


def run(out: Path) -> dict[str, Any]:
    """The row: reference and disturbed runs through two namespaced worker hosts."""
    reason = namespaces_unavailable()
    if reason is not None:
        return {"row": "worker host cut off (network namespaces)", "skipped": reason}
    shutil.rmtree(out, ignore_errors=True)
    key = secrets.token_urlsafe(18)
    stack = LocalStack(out / "data", {"chaos": key}, port=free_port(), workers=0, gpus=[])
    network = Network(WORKERS)
    relays: list[Relay] = []
    workers = []
    try:
        stack.start_servers()
        assert stack.redis is not None and stack.s3 is not None
        relays = [Relay(stack.redis.port), Relay(stack.s3.port)]
        env = stack.env()
        env["BRAINSYNTH_BROKER_URL"] = env["BRAINSYNTH_BROKER_URL"].replace("127.0.0.1", HOST_IP)
        env["BRAINSYNTH_S3_ENDPOINT"] = f"{HOST_IP}:{stack.s3.port}"
        env["OMP_NUM_THREADS"] = "1"  # two workers share this machine's cores
        for i in range(WORKERS):
            command = ["ip", "netns", "exec", network.namespace(i), *worker_command(i)]
            workers.append(start_worker_process(i, env, stack.logs / f"worker-{i}.log", command))
        stack.start_api()
        stack.wait_until_ready(120)
        http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        reference, reference_s = _cohort(http)
        expected = _niftis(http, reference["id"])
        cut_log = stack.logs / "worker-0.log"
        timeline: dict[str, float] = {}

        def cut_worker_0(cohort_id: str) -> None:
            since = cut_log.stat().st_size
            deadline = time.monotonic() + 120
            while not _holds_a_task(cut_log, since) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # mid-task
            timeline["cut"] = time.monotonic()
            network.cut(0)
            time.sleep(CUT_S)
            network.restore(0)
            timeline["restored"] = time.monotonic()
            timeline["restored_wall"] = time.time()

        started = time.monotonic()
        disturbed, disturbed_s = _cohort(http, cut_worker_0)
        finished = started + disturbed_s
        got = _niftis(http, disturbed["id"])
        time.sleep(15)  # the cut-off worker's late writes (storage retries every 2 s) land now: read again
        again = _niftis(http, disturbed["id"])
        writes = _writes(stack.logs, disturbed["id"])
        late = _late_writes(stack.logs / "worker-0.log", disturbed["id"], timeline.get("restored_wall", 0.0))
        budget = timeline.get("cut", started) - started + 60 + reference_s
        return {
            "row": "worker host cut off (network namespaces), link down 45 s mid-task",
            "status": disturbed["status"],
            "stored": len(got),
            "identical_to_reference": sum(got.get(p) == b for p, b in expected.items()),
            "identical_after_late_writes": got == again and len(again) == len(expected),
            "subjects_written_twice": sum(len(w) > 1 for w in writes.values()),
            "written_by_cut_off_worker_after_restore": late,
            "reference_s": round(reference_s, 1),
            "wall_s": round(disturbed_s, 1),
            "finished_after_cut_s": round(finished - timeline.get("cut", started), 1),
            "within_budget": disturbed_s <= budget,
        }
    finally:
        for process in workers:
            process.kill()
        for relay in relays:
            relay.close()
        stack.stop()
        network.remove()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/chaos-netns"))
    print(json.dumps(run(parser.parse_args().out), indent=2))
