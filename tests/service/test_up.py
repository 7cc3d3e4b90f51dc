"""`brainsynth up` as an operator runs it: the stack comes up, a dead worker is restarted, Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


def test_up_restarts_a_dead_worker_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "brainsynth.cli", "up", "--port", str(port), "--data-dir", str(tmp_path / "d"),
               "--api-key", "lab=k", "--workers", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    up = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not _ready(url) and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.3)
        assert _ready(url), "brainsynth up did not become ready"
        children = _children(up.pid)
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
        alive = [
            pid
            for pid in every
            if Path(f"/proc/{pid}").exists()
            and b"Z" not in Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1][:3]
        ]
        assert alive == [], "processes left running after Ctrl-C"
        assert not _ready(url)
    finally:
        if up.poll() is None:
            up.kill()
