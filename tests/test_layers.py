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
    for module in ("service.app", "service.cli", "service.client", "brainsynth.cli", "worker.state"):
        loaded = _modules_after_import(module)
        assert "torch" not in loaded and "monai" not in loaded, module


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
