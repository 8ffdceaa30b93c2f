"""The repository's own promises: lint clean, CI runs the README's command, demo runs."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_clean():
    result = subprocess.run([str(BIN / "ruff"), "check", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_core_package_imports_no_orchestration_framework():
    code = (
        "import sys, importlib, pkgutil, ebmrl\n"
        "skip = ('ebmrl.stages', 'ebmrl.cli', 'ebmrl.tracking')\n"
        "for m in pkgutil.walk_packages(ebmrl.__path__, 'ebmrl.'):\n"
        "    if not m.name.startswith(skip): importlib.import_module(m.name)\n"
        "bad = [m for m in ('prefect', 'dvc', 'mlflow', 'flows') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"core imports {result.stdout.strip()}"


def _tracked_copy(dest: Path) -> None:
    files = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end_and_reruns_fast(tmp_path):
    """What `make demo` does after installing: validate params, dvc repro, list outputs."""
    work = tmp_path / "repo"
    _tracked_copy(work)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run = lambda *cmd: subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)  # noqa: E731
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
    ):
        assert run(*cmd).returncode == 0
    first = run("dvc", "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (work / "models" / "tiny" / "qwen2_5_vl" / "config.json").is_file()
    assert len(list((work / "data" / "demo" / "videos").glob("*.mp4"))) == 24
    assert (work / "dvc.lock").is_file()
    started = time.perf_counter()
    again = run("dvc", "repro")
    elapsed = time.perf_counter() - started
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout
    print(f"no-op dvc repro: {elapsed:.2f}s")
    listing = run("ebmrl", "outputs")
    assert listing.returncode == 0 and "(missing)" not in listing.stdout
    assert str(work / "data" / "demo") in listing.stdout
