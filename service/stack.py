"""The whole stack as local processes (``brainsynth up``, the demo and the end-to-end tests).

Redis (AOF, password) and SeaweedFS from :mod:`service.localstack`, N Celery workers (``--pool=solo``, one
process each, as on GPUs), M measuring workers (SAMSEG, on the ``measure`` queue, in their own environment:
:data:`MEASURE_VENV`) and the API under uvicorn. Data lives in one directory, so a restarted stack finds
its cohorts again. Any child that dies, Redis and SeaweedFS included, is restarted with its data by
:meth:`LocalStack.supervise_once`; the API and workers ride through the gap with their retries.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jobs.contract import MEASURE_QUEUE
from service.localstack import RedisServer, S3Server, ServerError, start_redis, start_s3

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The measuring workers' environment (SAMSEG pins numpy < 2, so it is not the torch workers'): made by
#: ``make install``; ``BRAINSYNTH_MEASURE_PYTHON`` names another interpreter.
MEASURE_VENV = REPO_ROOT / ".venv-measure"


def measure_python() -> Path:
    """The measuring environment's Python; raises :class:`ServerError` saying how to make it when missing."""
    configured = os.environ.get("BRAINSYNTH_MEASURE_PYTHON")
    python = Path(configured) if configured else MEASURE_VENV / "bin" / "python"
    if not python.is_file():
        raise ServerError(
            f"no measuring environment at {python}: run `make install` (it builds .venv-measure with SAMSEG), "
            "or set BRAINSYNTH_MEASURE_PYTHON to a Python that has `pip install brainsynth[measure]`"
        )
    return python


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM (a worker finishes its running subject's write, the API its requests), SIGKILL after ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries: that variable's list when set,
    else one index per GPU that ``nvidia-smi -L`` lists; none without NVIDIA's driver."""
    configured = os.environ.get("CUDA_VISIBLE_DEVICES")
    if configured is not None:
        return [entry.strip() for entry in configured.split(",") if entry.strip() and entry.strip() != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listing.stdout.splitlines() if line.startswith("GPU "))]


def worker_command(index: int) -> list[str]:
    """How every local worker runs: one Celery process with the solo pool (one task at a time, as on a GPU)."""
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
            f"--hostname=worker{index}@%h", "--without-mingle", "--without-gossip", "--loglevel=INFO"]  # fmt: skip


def measure_worker_command(index: int, python: Path) -> list[str]:
    """How every local measuring worker runs: one Celery process (solo pool: one SAMSEG run at a time) serving
    the ``measure`` queue alone, with the measuring environment's ``python``."""
    return [str(python), "-m", "celery", "-A", "worker.measure_app", "worker", "--pool=solo", "-Q", MEASURE_QUEUE,
            f"--hostname=measure{index}@%h", "--without-mingle", "--without-gossip", "--loglevel=INFO"]  # fmt: skip


def start_worker_process(
    index: int, env: dict[str, str], log: Path, command: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Worker ``index`` with ``env`` (``command``: a generating worker's by default), its output appended to ``log``."""
    with open(log, "ab") as sink:
        return subprocess.Popen(command or worker_command(index), env=env, stdout=sink, stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT)  # fmt: skip


@dataclass
class LocalStack:
    """Redis, SeaweedFS, workers and the API for one data directory."""

    data_dir: Path
    api_keys: dict[str, str]
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    #: SAMSEG measuring workers (``qc: samseg`` cohorts are refused without one).
    measure_workers: int = 0
    #: Extra ``BRAINSYNTH_*`` settings for workers and the API (e.g. a short visibility timeout in tests).
    settings: dict[str, str] = field(default_factory=dict)
    redis: RedisServer | None = None
    s3: S3Server | None = None
    worker_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    measure_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api_process: subprocess.Popen[bytes] | None = None
    #: GPUs the workers are spread over, one each (:func:`visible_gpus` by default).
    gpus: list[str] = field(default_factory=visible_gpus)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    def _credentials(self) -> dict[str, str]:
        """S3 credentials and the Redis password of this data directory, made once and kept (0600)."""
        path = self.data_dir / "s3-credentials.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        wanted = {"access_key": "brainsynth", "secret_key": secrets.token_urlsafe(24),
                  "redis_password": secrets.token_urlsafe(24)}  # fmt: skip
        if not wanted.keys() <= saved.keys():
            saved = {**wanted, **saved}
            path.write_text(json.dumps(saved))
        path.chmod(0o600)
        return saved

    def env(self) -> dict[str, str]:
        """Environment of workers and the API."""
        assert self.redis is not None and self.s3 is not None, "start() first"
        return {
            **os.environ,
            "BRAINSYNTH_BROKER_URL": self.redis.url,
            "BRAINSYNTH_S3_ENDPOINT": self.s3.endpoint,
            "BRAINSYNTH_S3_ACCESS_KEY": self.s3.access_key,
            "BRAINSYNTH_S3_SECRET_KEY": self.s3.secret_key,
            "BRAINSYNTH_API_KEYS": json.dumps(self.api_keys),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            **({"BRAINSYNTH_MEASURE_SAMSEG": "true"} if self.measure_workers else {}),
            **self.settings,
        }

    def start_servers(self, *, redis_port: int | None = None, s3_port_base: int | None = None) -> None:
        """Redis and SeaweedFS (again on the same ports and data when given them)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        credentials = self._credentials()
        self.redis = start_redis(self.data_dir / "redis", port=redis_port, password=credentials["redis_password"])
        self.s3 = start_s3(
            self.data_dir / "s3", credentials["access_key"], credentials["secret_key"], port_base=s3_port_base
        )

    def worker_env(self, index: int) -> dict[str, str]:
        """Worker ``index``'s environment: with GPUs visible, it sees only GPU ``index`` (round robin when
        there are more workers than GPUs), so N workers on N GPUs never share one; without GPUs, N workers
        split the CPU cores between their torch threads."""
        env = self.env()
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]
        elif self.workers > 1 and "OMP_NUM_THREADS" not in env:
            # CPU workers share the cores instead of each spawning a thread per core (oversubscription)
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        if env.get("BRAINSYNTH_METRICS_PORT"):  # one metrics port per worker process: the given one, +1, +2 ...
            env["BRAINSYNTH_METRICS_PORT"] = str(int(env["BRAINSYNTH_METRICS_PORT"]) + index)
        return env

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        process = start_worker_process(index, self.worker_env(index), self.logs / f"worker-{index}.log")
        if index < len(self.worker_processes):
            self.worker_processes[index] = process
        else:
            self.worker_processes.append(process)
        return process

    def measure_worker_env(self) -> dict[str, str]:
        """A measuring worker's environment: SAMSEG's threads share the cores with the other measuring workers."""
        env = self.env()
        if "BRAINSYNTH_SAMSEG_THREADS" not in env:
            env["BRAINSYNTH_SAMSEG_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.measure_workers))
        env.pop("BRAINSYNTH_METRICS_PORT", None)  # the generating workers' ports
        return env

    def start_measure_worker(self, index: int) -> subprocess.Popen[bytes]:
        command = measure_worker_command(index, measure_python())
        process = start_worker_process(index, self.measure_worker_env(), self.logs / f"measure-{index}.log", command)
        if index < len(self.measure_processes):
            self.measure_processes[index] = process
        else:
            self.measure_processes.append(process)
        return process

    def start_api(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", self.host,
                   "--port", str(self.port), "--log-level", "warning",
                   "--no-access-log"]  # fmt: skip
        with open(self.logs / "api.log", "ab") as sink:
            self.api_process = subprocess.Popen(
                command, env=self.env(), stdout=sink, stderr=subprocess.STDOUT, cwd=REPO_ROOT
            )
        return self.api_process

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Until /readyz says Redis, storage and a worker answer."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.api_process is not None and self.api_process.poll() is not None:
                raise ServerError(
                    f"the API exited with code {self.api_process.returncode}; see {self.logs / 'api.log'}"
                )
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as err:
                last = err.read().decode(errors="replace")
            except OSError as err:
                last = str(err)
            time.sleep(0.3)
        raise ServerError(f"the stack was not ready after {timeout:.0f} s ({last}); see {self.logs}")

    def start(self) -> None:
        """Everything, in dependency order; returns once the API reports ready. When a part fails to start, the
        parts already started are stopped before the error is raised (nothing is left running)."""
        if self.measure_workers:
            measure_python()  # say how to make the measuring environment before starting anything
        try:
            self.start_servers()
            for index in range(self.workers):
                self.start_worker(index)
            for index in range(self.measure_workers):
                self.start_measure_worker(index)
            self.start_api()
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def supervise_once(self) -> list[str]:
        """Restart any child that exited (Redis and SeaweedFS on their ports with their data, workers, the
        API); returns what was restarted. Raises only if a server cannot be started again."""
        restarted = []
        for name, server in (("Redis", self.redis), ("SeaweedFS", self.s3)):
            if server is not None and server.process.poll() is not None:
                code = server.process.returncode
                server.restart()
                restarted.append(f"{name} (exit code {code})")
        for index, process in enumerate(self.worker_processes):
            if process.poll() is not None:
                self.start_worker(index)
                restarted.append(f"worker {index} (exit code {process.returncode})")
        for index, process in enumerate(self.measure_processes):
            if process.poll() is not None:
                self.start_measure_worker(index)
                restarted.append(f"measuring worker {index} (exit code {process.returncode})")
        if self.api_process is not None and self.api_process.poll() is not None:
            code = self.api_process.returncode
            self.start_api()
            restarted.append(f"API (exit code {code})")
        return restarted

    def stop(self) -> None:
        """API, workers (they requeue unfinished tasks), then the servers."""
        if self.api_process is not None:
            stop_process(self.api_process)
        for process in [*self.worker_processes, *self.measure_processes]:
            # a task still running is killed after 10 s: it is not acknowledged, so it runs again on restart
            stop_process(process, timeout=10)
        for server in (self.s3, self.redis):
            if server is not None:
                server.stop()
