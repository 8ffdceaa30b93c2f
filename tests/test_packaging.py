"""Packaging: `pip install ebmrl` is the core and the trainers; the pipeline extra adds
Prefect, DVC and MLflow; the license is an SPDX expression."""

import os
import subprocess
import sys
import sysconfig
import tomllib
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINE = ("prefect", "dvc", "mlflow")


def project():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def distribution_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.lower()


def test_the_orchestration_frameworks_come_with_the_pipeline_extra_only():
    meta = project()
    core = {distribution_name(r) for r in meta["dependencies"]}
    pipeline = {distribution_name(r) for r in meta["optional-dependencies"]["pipeline"]}
    assert not {n for n in core if n.startswith(PIPELINE)}, core
    assert {"prefect", "dvc", "dvc-s3", "mlflow"} <= pipeline
    assert {"torch", "transformers", "trl", "open_clip_torch", "s3fs"} <= core
    assert "pytest" in {distribution_name(r) for r in meta["optional-dependencies"]["dev"]}
    # make install/demo/test install everything, as before the split.
    assert "'.[pipeline,dev]'" in (REPO / "Makefile").read_text()


def test_the_license_is_an_spdx_expression_setuptools_accepts_without_warning():
    from setuptools.config.pyprojecttoml import read_configuration

    meta = project()
    assert meta["license"] == "Apache-2.0"
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # setuptools warns on the old table form
        read_configuration(REPO / "pyproject.toml")


@pytest.fixture(scope="module")
def site_without_pipeline(tmp_path_factory):
    """The installed packages minus Prefect, DVC and MLflow (links to everything else):
    an environment where `pip install ebmrl` ran without the pipeline extra."""
    site = Path(sysconfig.get_paths()["purelib"])
    view = tmp_path_factory.mktemp("site-without-pipeline")
    for entry in site.iterdir():
        if entry.name.lower().startswith(PIPELINE) or entry.suffix == ".pth":
            continue
        (view / entry.name).symlink_to(entry)
    return view


def run_without_pipeline(view, *args, **kwargs):
    # -S: no site-packages of the venv (nor its .pth files); only the view and the repo.
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{view}", "PYTHONNOUSERSITE": "1"}
    return subprocess.run(
        [sys.executable, "-S", *args], capture_output=True, text=True, env=env, cwd=REPO, **kwargs
    )


@pytest.mark.slow
def test_the_core_and_trainers_import_without_the_pipeline_extra(site_without_pipeline):
    code = (
        "import sys\n"
        "try:\n"
        "    import mlflow\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('mlflow is importable: the view leaks it')\n"
        "import ebmrl.cli, ebmrl.train.grpo, ebmrl.train.sft, ebmrl.train.video_grpo\n"
        "import ebmrl.rewards.clip, ebmrl.rewards.pcg, ebmrl.rewards.answer, ebmrl.data.ingest\n"
        "print(','.join(m for m in ('prefect', 'dvc', 'mlflow') if m in sys.modules) or 'none')\n"
    )
    result = run_without_pipeline(site_without_pipeline, "-c", code, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "none"


@pytest.mark.slow
def test_a_tracked_stage_without_mlflow_names_the_extra_before_any_work(site_without_pipeline):
    result = run_without_pipeline(site_without_pipeline, "-m", "ebmrl.cli", "grpo", timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "pip install 'ebmrl[pipeline]'" in result.stderr
    assert "--no-tracking" in result.stderr
