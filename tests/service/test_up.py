"""`brainsynth up` as an operator runs it: the stack comes up, a dead worker is restarted, Ctrl-C stops all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from jobs.dispatch import DISPATCH_CHUNK_BATCHES
from service.localstack import free_port

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    """Every descendant process id of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def _child(children: set[int], needle: bytes) -> int:
    (pid,) = [p for p in children if needle in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]]
    return pid


def _wait_ready(url: str, up: subprocess.Popen[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _ready(url) and time.monotonic() < deadline and up.poll() is None:
        time.sleep(0.3)
    return _ready(url)


def _local_services_refuse_anonymous_access(data_dir: Path, children: set[int]) -> None:
    """Redis wants its password; SeaweedFS serves objects only through the signed S3 gateway."""
    import redis

    redis_port = int(next(line for line in (data_dir / "redis" / "redis.conf").read_text().splitlines()
                          if line.startswith("port ")).split()[1])  # fmt: skip
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_port).ping()
    weed = Path(f"/proc/{_child(children, b'weed')}/cmdline").read_bytes().decode().split("\0")
    filer = int(next(a for a in weed if a.startswith("-filer.port=")).split("=")[1])
    volume = int(next(a for a in weed if a.startswith("-volume.port=")).split("=")[1])
    s3 = int(next(a for a in weed if a.startswith("-s3.port=")).split("=")[1])
    master = int(next(a for a in weed if a.startswith("-master.port=")).split("=")[1])
    for port in (filer, volume, master):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/buckets/brainsynth/x", data=b"x", method="PUT")
        with pytest.raises(OSError):  # HTTPError (4xx: no JWT, or plain HTTP to the master's TLS) or refused
            urllib.request.urlopen(request, timeout=3)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{master}/cluster/status", timeout=3)
    for port in (master, master + 10000, filer + 10000, volume + 10000):  # HTTPS and gRPC: mutual TLS
        assert not _speaks_plain_http2(port), port
        assert not _tls_answers_without_a_client_certificate(port), port
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"http://127.0.0.1:{s3}/brainsynth?list-type=2", timeout=3)
    assert denied.value.code == 403


def _speaks_plain_http2(port: int) -> bool:
    """Whether ``port`` answers an unencrypted HTTP/2 preface with a SETTINGS frame (plaintext gRPC does)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            frame = conn.recv(9)
    except OSError:
        return False
    return len(frame) == 9 and frame[3] == 4


def _tls_answers_without_a_client_certificate(port: int) -> bool:
    """Whether a TLS client with no certificate gets an answer from ``port`` (an HTTP/2 preface is sent)."""
    import socket
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as conn,
        ):
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if conn.selected_alpn_protocol() == "h2"
                         else b"GET /cluster/status HTTP/1.1\r\nHost: x\r\n\r\n")  # fmt: skip
            return bool(conn.recv(64))
    except (ssl.SSLError, ConnectionError, TimeoutError, OSError):
        return False


def _call(url: str, method: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def _queue_tasks(url: str) -> dict[str, float]:
    """The broker's task counts by state, read from the API's /metrics as an operator's dashboard does."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'^brainsynth_queue_tasks\{state="(\w+)"\} (\S+)$', text, re.M)
    return {state: float(value) for state, value in found}


def _a_huge_cohort_is_accepted_and_its_cancel_empties_the_queue(url: str) -> None:
    """The shipped limit takes the paper's 100,000 brains in one cohort: the POST answers 202 with one chunk of
    work queued (not 25,000 tasks), and a cancel leaves nothing of it queued within a minute."""
    huge = {"model": "demo", "n_subjects": 100_000, "seed": 5, "sampler": {"name": "dpmpp2m", "steps": 2}, "qc": "none"}
    status, body = _call(url + "/v1/cohorts", "POST", huge)
    assert status == 202 and body["progress"]["total"] == 100_000
    assert 0 < _queue_tasks(url)["queued"] <= DISPATCH_CHUNK_BATCHES + 1
    status, body = _call(url + f"/v1/cohorts/{body['id']}/cancel", "POST")
    assert status == 200 and body["status"] == "canceled"
    deadline = time.monotonic() + 60
    while (counts := _queue_tasks(url))["queued"] + counts["unacked"] > 0:
        assert time.monotonic() < deadline, f"the canceled cohort's work is still queued a minute later: {counts}"
        time.sleep(1)
    _, after = _call(url + f"/v1/cohorts/{body['id']}", "GET")
    assert after["status"] == "canceled" and after["progress"]["done"] < 100


def test_up_supervises_every_child_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    keys = tmp_path / "keys.txt"
    keys.write_text("# tenant=key\nlab=k\n")
    data_dir = tmp_path / "d"
    command = [sys.executable, "-m", "brainsynth.cli", "up", "--port", str(port), "--data-dir", str(data_dir),
               "--api-key-file", str(keys), "--workers", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT as a terminal delivers it, even under a shell that ignores it for background jobs (an ignored
    # SIGINT is inherited, and Python then never raises KeyboardInterrupt)
    up = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        assert _wait_ready(url, up, 90), "brainsynth up did not become ready"
        children = _children(up.pid)
        assert all(b"lab=k" not in Path(f"/proc/{p}/cmdline").read_bytes() for p in {up.pid, *children})
        _local_services_refuse_anonymous_access(data_dir, children)
        for needle, signum in ((b"redis-server", signal.SIGTERM), (b"weed", signal.SIGKILL)):
            os.kill(_child(children, needle), signum)
            time.sleep(2)
            assert _wait_ready(url, up, 60), f"not ready again after {needle.decode()} was stopped"
            children = _children(up.pid)
            assert up.poll() is None
        request = urllib.request.Request(url + "/v1/models", headers={"Authorization": "Bearer k"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        _a_huge_cohort_is_accepted_and_its_cancel_empties_the_queue(url)
        workers = [pid for pid in children if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) >= 2
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = _children(up.pid)
            celery = [p for p in now if p not in children and b"celery" in Path(f"/proc/{p}/cmdline").read_bytes()]
            if celery:
                break
            time.sleep(0.3)
        assert celery, "the killed worker was not restarted"
        every = _children(up.pid)
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=120)
        assert up.returncode == 0, err
        assert f"API at {url}" in out and "restarted worker" in err
        assert "restarted Redis" in err and "restarted SeaweedFS" in err
        alive = [
            pid
            for pid in every
            if Path(f"/proc/{pid}").exists()
            and b"Z" not in Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1][:3]
        ]
        assert alive == [], "processes left running after Ctrl-C"
        assert not _ready(url)
    finally:  # a failed test must not leave the stack's children running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
