"""``ebmrl videoqa`` + ``ebmrl evaluate`` end to end on the demo with the tiny models.

Systems: the tiny VLM in process (``base``), an OpenAI-compatible endpoint serving a
scripted system (``grpo``), and a model folder that does not exist (``sft``). The judge
is a deterministic model behind real HTTP. One test sample's clip is missing from the
frame store. Everything that cannot be scored must be reported, never invented.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import RuleJudge, ScriptedSystem, ink, no_external_resources, run_stats, screenshot

from ebmrl.cli import main
from ebmrl.data.dataset import write_dataset
from ebmrl.demo import profile_book

FIXTURES = Path(__file__).parent / "fixtures" / "videoqa"
BIN = Path(sys.executable).parent
GRPO_LINE = "Eyes up, everyone, we hold the line."  # 7 words: the rule judge gives 70
GRPO_OUTPUT = (
    "<perception>Two figures walk along a dim street.</perception>\n"
    f"<think>A calm scene.</think>\n<answer>{GRPO_LINE}</answer>"
)


@pytest.fixture
def workspace(tmp_path, demo_data, demo_store, tiny_models, http_model):
    """A params file and inputs in tmp: 3 test samples with clips + 1 whose clip is gone."""
    samples = demo_store["result"].samples
    gone = samples[3].model_copy(update={"clip_id": "0000000000000000", "sample_id": 999})
    write_dataset(tmp_path / "dataset", {"train": [], "test": [*samples[:3], gone]}, profile_book())
    log = [{"step": s, "reward": 0.1 * s, "rewards/format/mean": s - 5.0} for s in range(1, 6)]
    (tmp_path / "grpo_log.json").write_text(json.dumps(log + [{"step": 5, "train_runtime": 1.0}]))
    scripted = http_model(ScriptedSystem({}, GRPO_OUTPUT))
    params = {
        "models": {
            "vlm": str(tiny_models["vlm"]),
            "clip": str(tiny_models["clip"]),
            "text_encoder": str(tiny_models["text_encoder"]),
            "text_encoder_layers": 2,
        },
        "evaluate": {
            "dataset": str(tmp_path / "dataset"),
            "frames": str(demo_store["frames"]),
            "systems": [
                {"name": "base"},
                {"name": "sft", "model": str(tmp_path / "no-such-model")},
                {"name": "grpo", "base_url": scripted.url, "model": "scripted"},
            ],
            "max_new_tokens": 24,
            "cache": str(tmp_path / "eval_cache"),
            "out": str(tmp_path / "reports" / "eval"),
            "metrics": str(tmp_path / "metrics" / "eval.json"),
            "plot_data": str(tmp_path / "metrics" / "eval_plot.json"),
            "torch_threads": 1,
            "judge": {
                "backend": {"max_retries": 0},
                "max_tokens": 256,
                "max_attempts": 3,
                "serve_local": False,
                "pairwise": {"enabled": True, "pairs": [["grpo", "base"]]},
            },
        },
        "videoqa": {
            "systems": [{"name": "base"}],
            "benchmarks": [
                {
                    "name": "nextqa",
                    "format": "nextqa",
                    "annotations": str(FIXTURES / "nextqa/test.csv"),
                    "videos": str(demo_data["videos"]),
                    "video_map": str(FIXTURES / "nextqa/map_vid_vidorID.json"),
                    "max_questions": 3,
                }
            ],
            "frames": 4,
            "max_new_tokens": 16,
            "out": str(tmp_path / "videoqa"),
            "cache": str(tmp_path / "videoqa_cache"),
            "metrics": str(tmp_path / "metrics" / "videoqa"),
            "torch_threads": 1,
        },
        "report": {
            "results": str(tmp_path / "reports" / "eval" / "results.json"),
            "frames": str(demo_store["frames"]),
            "videoqa_metrics": str(tmp_path / "metrics" / "videoqa"),
            "training_log": str(tmp_path / "grpo_log.json"),
            "out": str(tmp_path / "reports" / "eval" / "index.html"),
        },
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return tmp_path, path, params


def samples_of(root):
    from ebmrl.data.dataset import load_split

    return load_split(root / "dataset", "test")


@pytest.mark.slow
def test_evaluate_end_to_end_with_a_judge_over_http(workspace, http_model, capsys):
    root, params_path, _ = workspace
    assert main(["--params", str(params_path), "videoqa", "--no-tracking"]) == 0
    nextqa = json.loads((root / "metrics" / "videoqa" / "nextqa.json").read_text())
    assert nextqa["base"]["questions"] == 3 and nextqa["base"]["scored"] == 3

    judge_model = RuleJudge()
    judge = http_model(judge_model)
    args = ["--params", str(params_path), "evaluate", "--no-tracking", "--judge-url", judge.url]
    assert main([*args, "--judge-model", "rule-judge"]) == 0
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    grpo, base, sft = (metrics["systems"][s] for s in ("grpo", "base", "sft"))
    # The rule judge's scores, exactly; the sample whose clip is gone is counted, not scored.
    for metric in ("veg", "spc", "cn"):
        assert grpo["judge"][metric] == 70.0
        assert (grpo["judge"][f"{metric}_scored"], grpo["judge"][f"{metric}_not_scored"]) == (3, 1)
        assert base["judge"][metric] == 0.0  # the random tiny model says nothing: 0, unasked
        assert metric not in sft["judge"] and sft["judge"][f"{metric}_not_scored"] == 4
    assert grpo["judge"]["mean"] == 70.0 and "mean" not in sft["judge"]
    assert grpo["auto"]["format_ok"] == 1.0 and grpo["auto"]["answer_words"] == 7.0
    assert 0 < grpo["auto"]["bertscore_f1"] <= 1 and grpo["auto"]["clipscore"] >= 0
    assert sft["auto"]["scored"] == 0
    # Perception against the ground truth the demo's samples carry (3 clips are known and
    # readable; the missing clip's sample is not scored).
    from ebmrl.eval.perception import perception_scores

    truths = [s.scene_attributes.known() for s in samples_of(root)[:3]]
    expected = [perception_scores("Two figures walk along a dim street.", t) for t in truths]
    assert grpo["auto"]["perception_scored"] == 3
    assert grpo["auto"]["perception_accuracy"] == pytest.approx(
        sum(e["perception_accuracy"] for e in expected) / 3, abs=1e-5
    )
    assert base["auto"]["perception_accuracy"] == 0.0  # the random model writes no block
    assert "perception_accuracy" not in sft["auto"]  # nothing generated: no value, not 0
    assert metrics["pairwise"]["grpo_vs_base"]["veg"] == {
        "win": 3,
        "tie": 0,
        "loss": 0,
        "not_scored": 1,
        "position_flips": 0,
        "win_rate": 1.0,
        "net_win_rate": 1.0,
        "decisive_win_rate": 1.0,
        "p_value": 0.25,  # 3 wins of 3: P(3 or 0 of 3) = 2 / 8
        "first_order_only": 0,
        "first_order_only_win": 0,
        "first_order_only_tie": 0,
        "first_order_only_loss": 0,
        "confidence_high": 0,
        "confidence_medium": 0,
        "confidence_low": 0,
    }
    # 3 samples x 3 metrics, one request each (the empty base lines are never sent).
    assert (
        len(judge_model.requests)
        == 9
        == run_stats(capsys.readouterr().out, "evaluate")["judge"]["requests"]
    )
    assert "judge" not in metrics  # request counts are run statistics: the log, MLflow
    assert sorted(r["frames"] for r in judge_model.requests) == [0] * 3 + [8] * 6

    results = json.loads((root / "reports" / "eval" / "results.json").read_text())
    gone = next(s for s in results["samples"] if s["key"].endswith(":999"))
    assert "unreadable" in gone["clip_problem"] and gone["systems"]["grpo"]["error"]
    assert "ModelLoadError" in results["samples"][0]["systems"]["sft"]["error"]
    rows = json.loads((root / "metrics" / "eval_plot.json").read_text())
    assert {"metric": "VEG", "system": "grpo", "value": 70.0} in rows

    assert main(["--params", str(params_path), "report", "--no-tracking"]) == 0
    html = (root / "reports" / "eval" / "index.html").read_text()
    assert no_external_resources(html) == []
    assert "nextqa" in html and "GRPO reward curves" in html and "ModelLoadError" in html
    assert "id='about'" in html and "id='perception'" in html  # tiny models, known scenes
    assert "unreadable" in html and html.count("class='card'") == 4
    png = root / "report.png"
    screenshot(root / "reports" / "eval" / "index.html", png, root / "chromium-profile")
    share, spread = ink(png)
    assert share > 0.05 and spread > 20, (share, spread)

    # `dvc metrics show` reads the metrics file.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True, env=env)
    shown = subprocess.run(
        ["dvc", "metrics", "show", "--json", "metrics/eval.json"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data[""]["data"]["metrics/eval.json"]["data"]["systems"]["grpo"]["judge"]["veg"] == 70.0

    # A rerun asks the judge nothing and regenerates nothing; every output keeps its bytes.
    written = {
        path: path.read_bytes()
        for path in [root / "metrics" / "eval.json", root / "metrics" / "eval_plot.json"]
        + sorted((root / "reports" / "eval").iterdir())
    }
    capsys.readouterr()
    assert main([*args, "--judge-model", "rule-judge"]) == 0
    assert len(judge_model.requests) == 9
    again = run_stats(capsys.readouterr().out, "evaluate")
    assert again["generation"]["base"]["completed"] == 0
    assert again["generation"]["base"]["cache_hits"] == 3
    assert again["judge"]["cache_hits"] == 9 and again["judge"]["requests"] == 0
    assert main(["--params", str(params_path), "report", "--no-tracking"]) == 0
    assert {path: path.read_bytes() for path in written} == written


@pytest.mark.slow
def test_demo_judge_is_the_tiny_vlm_behind_ebmrl_serve_and_never_invents_scores(
    workspace, monkeypatch, capsys
):
    """The default demo path: the stage serves the tiny random VLM over HTTP as the judge.
    Its replies are not JSON, so every judgement is honestly "not scored"; the automatic
    metrics still count, and the numbers go to MLflow."""
    root, params_path, params = workspace
    params["evaluate"]["max_samples"] = 2
    params["evaluate"]["systems"] = [
        s for s in params["evaluate"]["systems"] if s["name"] == "grpo"
    ]
    params["evaluate"]["judge"] = {
        "serve_local": True,
        "backend": {"kind": "local", "torch_threads": 1, "max_retries": 0},
        "max_tokens": 16,
        "max_attempts": 2,
        "metrics": ["veg", "cn"],
        "pairwise": {"enabled": False},  # one system: nothing to compare
    }
    params["report"]["videoqa_metrics"] = None  # videoqa does not run here
    params_path.write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "eval-test")
    monkeypatch.delenv("EBMRL_PARENT_RUN_ID", raising=False)
    assert main(["--params", str(params_path), "evaluate"]) == 0
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    judged = metrics["systems"]["grpo"]["judge"]
    assert "veg" not in judged and "cn" not in judged
    assert (judged["veg_scored"], judged["veg_not_scored"]) == (0, 2)
    stats = run_stats(capsys.readouterr().out, "evaluate")["judge"]
    assert stats["requests"] == 2 * 2 * 2  # samples x metrics x attempts
    assert stats["failed"] == 4
    results = json.loads((root / "reports" / "eval" / "results.json").read_text())
    reasons = {
        j["not_scored"] for s in results["samples"] for j in s["systems"]["grpo"]["judge"].values()
    }
    assert reasons and all(r.startswith("invalid JSON after 2 attempt(s)") for r in reasons)
    assert main(["--params", str(params_path), "report", "--no-tracking"]) == 0
    html = (root / "reports" / "eval" / "index.html").read_text()
    assert "invalid JSON after 2 attempt(s)" in html
    assert "The judge here is a tiny model built for the demo" in html
    assert metrics["systems"]["grpo"]["auto"]["format_ok"] == 1.0

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("eval-test")
    (run,) = client.search_runs([experiment.experiment_id])
    logged = run.data.metrics
    assert logged["systems/grpo/auto/format_ok"] == 1.0
    assert logged["systems/grpo/judge/veg_not_scored"] == 2.0
    assert logged["run/judge/requests"] == 8.0
    assert run.data.tags["ebmrl.stage"] == "evaluate"
