"""Import direction of the three packages (style card 1)."""

from __future__ import annotations

import subprocess
import sys


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, importlib; importlib.import_module({module!r}); print(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_models_imports_no_service_stack() -> None:
    loaded = _modules_after_import("models.cli")
    for forbidden in ("celery", "fastapi", "minio", "redis", "service", "worker"):
        assert forbidden not in loaded, forbidden


def test_service_package_imports_no_torch() -> None:
    loaded = _modules_after_import("service")
    assert "torch" not in loaded and "models" not in loaded


def test_api_server_and_client_never_import_torch() -> None:
    for module in ("service.app", "service.cli", "service.client", "brainsynth.cli", "jobs.state", "jobs.queue"):
        loaded = _modules_after_import(module)
        assert "torch" not in loaded and "monai" not in loaded, module


def test_the_script_loads_a_sides_dependencies_only_for_its_commands() -> None:
    """`brainsynth sample` works on an install without the service extra: routing loads no httpx or celery."""
    loaded = _modules_after_import("brainsynth.cli")
    assert not {"httpx", "celery", "fastapi", "torch"} & loaded, loaded & {"httpx", "celery", "fastapi", "torch"}


def test_sample_runs_on_an_install_without_the_service_extra(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """httpx, celery and fastapi blocked (as on `pip install brainsynth` without `[stack]`): sample still runs."""
    code = (
        "import sys\n"
        "for name in ('httpx', 'celery', 'fastapi', 'minio', 'redis'): sys.modules[name] = None\n"
        "from brainsynth.cli import main\n"
        f"raise SystemExit(main(['sample', '--model', 'demo', '--n', '1', '--seed', '1', '--steps', '2', "
        f"'--out', {str(tmp_path / 'out')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "sub-000001" / "anat" / "sub-000001_T1w.nii.gz").is_file()


def test_the_job_layer_stands_alone_and_the_api_needs_no_worker_code() -> None:
    """jobs/ (contract, state, storage, queue, shared settings) imports neither side; the API no worker code."""
    loaded = _modules_after_import("jobs.settings") | _modules_after_import("jobs.state")
    assert not {m for m in loaded if m.split(".")[0] in ("service", "worker")}
    api = _modules_after_import("service.app")
    assert not {m for m in api if m.split(".")[0] == "worker"}, "the API imports worker code"


def test_the_api_settings_are_not_the_workers() -> None:
    from service.settings import ServiceSettings
    from worker.config import WorkerSettings

    shared = {"broker_url", "s3_endpoint", "s3_access_key", "s3_secret_key", "visibility_timeout_s"}
    assert shared <= set(ServiceSettings.model_fields) and shared <= set(WorkerSettings.model_fields)
    assert not {"device", "precision", "compile", "decode_slab"} & set(ServiceSettings.model_fields)


def test_the_top_level_usage_lists_every_command_and_the_version(capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from brainsynth.cli import USAGE, main
    from models.cli import _build_parser as models_parser
    from service.cli import _build_parser as service_parser

    for build in (models_parser, service_parser):
        commands = next(a for a in build()._actions if isinstance(a, argparse._SubParsersAction))
        for name in commands.choices:
            assert f"\n  {name} " in USAGE, name
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("brainsynth ")
