"""The package as users install it: a wheel built from the checkout, installed into a fresh virtual environment
outside the repository, runs the CLI, the API app (without torch) and a demo cohort from the installed copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("brainsynth", "jobs", "models", "service", "worker")


def _checkout_files() -> list[str]:
    """What a clone of the checkout holds: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return [name for name in listed.decode().split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built, without the network, from a copy of the checkout's files (never the working folder's
    build leftovers)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know its files")
    source = tmp_path_factory.mktemp("source")
    for name in _checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    return next(out.glob("brainsynth-*.whl"))


def test_the_wheel_holds_every_package_and_the_shipped_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for top in PACKAGES:
        for init in (REPO / top).rglob("__init__.py"):
            assert init.relative_to(REPO).as_posix() in names, f"{init.parent.relative_to(REPO)} is missing"
    assert "models/dataset/bids.py" in names  # left out by the hand-written package list once
    assert {"models/zoo/demo/model.json", "models/zoo/demo/model.pt", "service/web/app.js"} <= names
    assert not [name for name in names if name.startswith("tests/")]


def test_the_installed_wheel_runs_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv outside the repo gets the wheel (no editable link to the source); its dependencies come from
    this environment's site-packages through a .pth line, so the test needs no network."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    # after the install, so pip sees an empty environment (never this one's editable brainsynth)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"BRAINSYNTH_MODELS_DIR": str(tmp_path / "m")}

    def run(*command: str | Path) -> str:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run(venv / "bin" / "brainsynth", "--version").startswith("brainsynth ")
    where = run(python, "-c", "import sys, service.app, models.dataset.bids as b; "
                "assert 'torch' not in sys.modules; print(b.__file__)")  # fmt: skip
    assert Path(where.strip()).is_relative_to(site)  # the installed copy, not the checkout
    out = tmp_path / "cohort"
    run(venv / "bin" / "brainsynth", "sample", "--model", "demo", "--n", "1", "--seed", "3", "--steps", "3",
        "--out", out)  # fmt: skip
    assert (out / "sub-000001" / "anat" / "sub-000001_T1w.nii.gz").is_file()
    assert (out / "SHA256SUMS").is_file()
