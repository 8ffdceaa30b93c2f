"""The evaluation's DVC wiring: stages, params, metrics, and plots that render offline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ink, require_chromium, screenshot

from ebmrl.config import load

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def dvc_yaml():
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_stages_list_the_params_they_read_and_declare_their_metrics(dvc_yaml):
    params = load(REPO / "params.yaml")
    stages = dvc_yaml["stages"]
    evaluate, videoqa, report = stages["evaluate"], stages["videoqa"], stages["report"]
    assert evaluate["cmd"] == "ebmrl evaluate" and videoqa["cmd"] == "ebmrl videoqa"
    assert report["cmd"] == "ebmrl report"
    for stage in (evaluate, videoqa, report):
        for key in stage["params"]:
            section, _, field = key.partition(".")
            assert hasattr(params, section), key
            assert not field or hasattr(getattr(params, section), field), key
    assert "tracking" not in evaluate["params"]
    metrics = [next(iter(m)) for m in evaluate["metrics"]]
    assert metrics == [params.evaluate.metrics]
    declared = {next(iter(m)) for m in videoqa["metrics"]}
    assert declared == {
        f"{params.videoqa.metrics}/{b.name}.json" for b in params.videoqa.benchmarks
    }
    assert all(
        next(iter(m.values()))["cache"] is False for m in evaluate["metrics"] + videoqa["metrics"]
    )
    # No path between evaluate and videoqa: the pipeline runs them at the same time. The
    # report stage reads both, and the GRPO log, as params.yaml's report section says.
    assert not [d for d in evaluate["deps"] if d.startswith(params.videoqa.metrics)]
    videoqa_outs = {next(iter(o)) if isinstance(o, dict) else o for o in videoqa["outs"]}
    assert videoqa_outs.isdisjoint(evaluate["deps"])
    assert "reports/eval/results.json" in evaluate["outs"]
    assert params.report.results == f"{params.evaluate.out}/results.json"
    for path in (params.report.results, params.report.frames, params.videoqa.metrics):
        assert path in report["deps"], path
    assert params.report.videoqa_metrics == params.videoqa.metrics
    assert params.report.training_log == params.grpo.log_history in report["deps"]
    assert report["outs"] == [params.report.out]
    # Every source file and fixture a stage depends on exists.
    for stage in (evaluate, videoqa, report):
        for dep in stage["deps"]:
            if dep.startswith(("ebmrl/", "tests/")):
                assert (REPO / dep).exists(), dep
    for spec in params.videoqa.benchmarks:
        for path in (spec.annotations, spec.answers, spec.video_map):
            assert path is None or (REPO / path).is_file(), path


def test_plot_definitions(dvc_yaml):
    plots = {name: spec for entry in dvc_yaml["plots"] for name, spec in entry.items()}
    curves = plots["GRPO reward curves"]
    assert curves["x"] == "step"
    assert curves["y"]["metrics/grpo_log.json"][0] == "reward"
    assert {f"rewards/{n}/mean" for n in ("answer", "format", "clip", "pcg")} <= set(
        curves["y"]["metrics/grpo_log.json"]
    )
    bars = plots["Metrics per system"]
    assert (REPO / ".dvc" / "plots" / f"{bars['template']}.json").is_file()
    config = (REPO / ".dvc" / "config").read_text()
    assert "html_template = plots/offline_page.html" in config


@pytest.mark.slow
def test_dvc_plots_show_renders_offline(tmp_path):
    """`dvc plots show` with the repo's config and templates: a page without any network
    reference whose charts really draw (vega marks in the DOM, ink in a screenshot)."""
    chromium = require_chromium()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    log = [
        {
            "step": s,
            "reward": 0.1 * s,
            "rewards/answer/mean": 0.02 * s,
            "rewards/format/mean": -4 + 0.4 * s,
            "rewards/clip/mean": 0.2,
            "rewards/pcg/mean": 0.01 * s,
        }
        for s in range(1, 21)
    ]
    (metrics / "grpo_log.json").write_text(json.dumps(log))
    rows = [
        {"metric": metric, "system": system, "value": value}
        for metric, values in (("VEG", (40, 55, 61)), ("BERTScore F1", (0.5, 0.6, 0.65)))
        for system, value in zip(("base", "sft", "grpo"), values, strict=True)
    ]
    (metrics / "eval_plot.json").write_text(json.dumps(rows))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    shown = subprocess.run(
        ["dvc", "plots", "show"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert shown.returncode == 0, shown.stderr
    assert "warning" not in shown.stderr.lower(), shown.stderr
    page = tmp_path / "dvc_plots" / "index.html"
    html = page.read_text()
    assert "cdn." not in html and 'src="http' not in html and "vegaEmbed" in html
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile-dom'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    # The reward-curve plot and the per-system bars drew (one vega view each).
    assert dom.count('class="marks"') == 2
    png = tmp_path / "plots.png"
    screenshot(page, png, tmp_path / "profile")
    share, spread = ink(png)
    assert share > 0.005 and spread > 10, (share, spread)  # a blank page: 0 and 0
