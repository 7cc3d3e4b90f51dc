"""Import directions of the packages (README, "Layout": models/ in ordered sections, jobs/ and service/ torch-free,
nothing imports the CLI): read from every ``import`` statement in the source (those
inside functions too), and checked at run time for what a process actually loads."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("brainsynth", "jobs", "models", "service", "worker")
#: models/ sections in import order: a module imports only from its own section and those before it.
MODEL_SECTIONS = ("errors", "cohort", "catalogue", "inference", "dataset", "training", "evaluation")
#: Modules of models/ that load torch or MONAI when imported (the API and jobs/ must never import them).
TORCH_SECTIONS = ("inference", "training", "evaluation")
THIRD_PARTY_SERVICE = ("celery", "fastapi", "httpx", "redis", "minio", "boto3", "uvicorn", "kombu")


def _imports() -> dict[str, set[str]]:
    """Every project module and the modules its ``import`` statements name (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
            found[module] = names
    return found


IMPORTS = _imports()


def _section(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_the_import_scan_sees_the_packages() -> None:
    """Guards the scan itself: it must find the modules and the imports it judges."""
    assert {"models.cohort.design", "models.inference.pipeline", "service.app", "worker.tasks"} <= IMPORTS.keys()
    assert "models.catalogue.config" in IMPORTS["models.inference.pipeline"]


def test_models_sections_import_only_earlier_sections_and_no_service_code() -> None:
    for module, names in IMPORTS.items():
        if not module.startswith("models."):
            continue
        rank = MODEL_SECTIONS.index(_section(module))
        for name in names:
            top = name.split(".")[0]
            assert top not in ("brainsynth", "jobs", "service", "worker"), (module, name)
            assert top not in THIRD_PARTY_SERVICE, (module, name)
            if top == "models":
                assert MODEL_SECTIONS.index(_section(name)) <= rank, f"{module} imports the later {name}"


def test_the_api_and_jobs_import_only_torch_free_models_and_never_the_workers() -> None:
    for module, names in IMPORTS.items():
        top = module.split(".")[0]
        if top not in ("jobs", "service"):
            continue
        for name in names:
            assert name.split(".")[0] not in ("worker", "brainsynth"), (module, name)
            assert name.split(".")[0] != "service" or top == "service", (module, name)
            if name.startswith("models."):
                assert _section(name) not in TORCH_SECTIONS, f"{module} imports {name}, which loads torch"
            assert name.split(".")[0] not in ("torch", "monai"), (module, name)


def test_workers_import_jobs_and_models_but_not_the_api_or_the_cli() -> None:
    for module, names in IMPORTS.items():
        if module.startswith("worker"):
            assert not {n for n in names if n.split(".")[0] in ("service", "brainsynth")}, module


def test_nothing_imports_the_cli() -> None:
    for module, names in IMPORTS.items():
        if not module.startswith("brainsynth"):
            assert not {n for n in names if n.split(".")[0] == "brainsynth"}, module


def _modules_after_import(module: str, block: tuple[str, ...] = ()) -> set[str]:
    code = (
        f"import sys, importlib\nfor name in {block!r}: sys.modules[name] = None\n"
        f"importlib.import_module({module!r}); print(' '.join(sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(result.stdout.split())


@pytest.mark.parametrize(
    "module", ["service.app", "service.client", "service.stack", "jobs.state", "jobs.queue", "jobs.storage"]
)
def test_the_api_client_and_job_layer_never_load_torch(module: str) -> None:
    loaded = _modules_after_import(module)
    assert not {"torch", "monai"} & loaded, module
    assert not {m for m in loaded if m.split(".")[0] == "worker"}, f"{module} loads worker code"


def test_the_measuring_worker_never_loads_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """It runs in SAMSEG's environment (numpy < 2, no torch): its app, task and logic load no torch or MONAI."""
    monkeypatch.setenv("BRAINSYNTH_S3_ACCESS_KEY", "k")
    monkeypatch.setenv("BRAINSYNTH_S3_SECRET_KEY", "s")
    loaded = _modules_after_import("worker.measure_app")
    assert not {"torch", "monai"} & loaded
    assert {"worker.measuring", "models.dataset.segmentation"} <= loaded and "worker.tasks" not in loaded


def test_the_script_builds_its_parser_without_either_sides_heavy_dependencies() -> None:
    """`brainsynth sample` works without the service extra and `brainsynth status` never loads torch: the
    parser is built with httpx, celery, fastapi and torch blocked."""
    code = (
        "import sys\nfor name in ('httpx', 'celery', 'fastapi', 'torch', 'monai', 'tqdm'): sys.modules[name] = None\n"
        "from brainsynth.cli import build_parser\n"
        "args = build_parser()[0].parse_args(['status', 'x', '--api-key', 'k'])\nprint(args.run.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "run", result.stderr[-2000:]


def test_sample_runs_on_an_install_without_the_service_extra(tmp_path: Path) -> None:
    """httpx, celery and fastapi blocked (as on `pip install brainsynth` without `[stack]`): sample still runs."""
    code = (
        "import sys\n"
        "for name in ('httpx', 'celery', 'fastapi', 'minio', 'redis'): sys.modules[name] = None\n"
        "from brainsynth.cli import main\n"
        f"raise SystemExit(main(['sample', '--model', 'demo', '--n', '1', '--seed', '1', '--steps', '2', "
        f"'--out', {str(tmp_path / 'out')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "sub-000001" / "anat" / "sub-000001_T1w.nii.gz").is_file()


def test_the_api_settings_are_not_the_workers() -> None:
    from service.settings import ServiceSettings
    from worker.config import WorkerSettings

    shared = {"broker_url", "s3_endpoint", "s3_access_key", "s3_secret_key", "visibility_timeout_s"}
    assert shared <= set(ServiceSettings.model_fields) and shared <= set(WorkerSettings.model_fields)
    assert not {"device", "precision", "compile", "decode_slab"} & set(ServiceSettings.model_fields)


def test_the_readme_layout_names_every_module() -> None:
    """The README's Layout section is where a newcomer finds a module: each one there is named in it."""
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    missing = [
        str(path.relative_to(REPO))
        for package in ("brainsynth", "jobs", "service", "worker", "bench")
        for path in sorted((REPO / package).rglob("*.py"))
        if path.name != "__init__.py" and not re.search(rf"\b{re.escape(path.stem)}\b", layout)
    ]
    assert missing == []


def test_jobs_names_no_worker_module_even_in_a_string() -> None:
    """jobs/ is shared by the API and the workers and imports neither: not even by name (Celery's include)."""
    for path in sorted((REPO / "jobs").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith("worker."), (path.name, node.value)
