"""What can be checked of the Docker deployment without a Docker engine: the compose file and Dockerfiles."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_names_every_service_with_image_and_healthcheck() -> None:
    services = _compose()["services"]
    assert {"api", "worker", "redis", "minio", "minio-init", "flower"} <= set(services)
    for name, service in services.items():
        assert service.get("image"), name
        if name != "minio-init":  # a one-shot job has nothing to keep healthy
            assert service["healthcheck"]["test"], name
    assert services["api"]["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert services["worker"]["build"]["dockerfile"] == "docker/worker.Dockerfile"
    for name in ("api", "worker", "flower", "minio-init"):
        assert all(dep.get("condition") for dep in services[name]["depends_on"].values()), name
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_compose_runs_redis_durably_and_reserves_a_gpu_per_worker() -> None:
    services = _compose()["services"]
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--maxmemory-policy noeviction" in redis_command
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1
    assert "monitoring" in services["flower"]["profiles"]
    volumes = set(_compose()["volumes"])
    assert {"redis-data", "minio-data", "models"} <= volumes
    for service in services.values():
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in volumes


def test_compose_secrets_are_required_not_defaulted() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    for secret in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "BRAINSYNTH_API_KEYS", "FLOWER_BASIC_AUTH"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses and all(use.startswith(":?") for use in uses), secret


def test_api_image_has_no_torch_and_worker_image_has_cuda_torch() -> None:
    api = (REPO / "docker" / "api.Dockerfile").read_text()
    installs = " ".join(line for line in api.splitlines() if "pip install" in line)
    assert "torch" not in installs and "--no-deps" in installs
    worker = (REPO / "docker" / "worker.Dockerfile").read_text()
    assert worker.startswith("#") and "FROM nvidia/cuda" in worker
    assert re.search(r"pip install \"torch==\$\{TORCH_VERSION\}\" --index-url", worker)
    assert "--pool=solo" in worker


def test_worker_health_is_the_heartbeat_and_redelivery_keeps_the_shipped_timeout() -> None:
    """A busy solo worker cannot answer ``celery inspect ping``; the heartbeat file can. Compose must not
    lengthen the visibility timeout (a killed worker's task would wait that long)."""
    worker = _compose()["services"]["worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.liveness", "/tmp/brainsynth-heartbeat"]
    assert worker["environment"]["BRAINSYNTH_HEARTBEAT_FILE"] == "/tmp/brainsynth-heartbeat"
    assert "BRAINSYNTH_VISIBILITY_TIMEOUT_S" not in worker["environment"]
    dockerfile = (REPO / "docker" / "worker.Dockerfile").read_text()
    assert "inspect ping" not in dockerfile and "worker.liveness" in dockerfile


def test_the_liveness_check_reads_the_beat_files_age(tmp_path: Path) -> None:
    import os
    import time

    from worker.liveness import main

    beat = tmp_path / "beat"
    assert main([str(beat)]) == 1  # never beat
    beat.touch()
    assert main([str(beat)]) == 0
    os.utime(beat, (time.time() - 60, time.time() - 60))
    assert main([str(beat)]) == 1
