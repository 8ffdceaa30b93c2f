"""DAG-wide properties of dvc.yaml on the CI profile, in a copy of the tree: a no-op
``dvc repro`` reruns nothing (and is quick), a reward weight invalidates only grpo and
reruns only grpo and the stages after it, an annotation prompt invalidates annotate,
invalid params stop ``dvc repro`` before any output is touched, the data stages built
again from scratch give the same bytes, and ``dvc exp run -S`` changes one line of
params.yaml; ``dvc exp show`` and ``dvc metrics diff`` work as the README shows them;
``bench/demo_sight.py`` reads the reproduced DAG's outputs."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import copy_working_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent


def run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def stages_that_ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def downstream(repo: Path, stage: str) -> set[str]:
    """Every stage that depends on ``stage``, directly or through other stages."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        graph = dvc_repo.index.graph  # edges: stage -> the stages it needs
        node = next(s for s in graph.nodes if s.name == stage)
        return {s.name for s in nx.ancestors(graph, node)}


@pytest.fixture(scope="module")
def ci_repo(tmp_path_factory) -> Path:
    """A copy on the CI profile with the whole DAG reproduced once."""
    work = copy_working_tree(tmp_path_factory.mktemp("dag") / "repo", profile="ci")
    started = time.perf_counter()
    result = run(work, "dvc", "repro")
    print(f"\nCI-profile DAG, dvc repro from scratch: {time.perf_counter() - started:.0f}s")
    assert "grpo" in stages_that_ran(result.stdout)
    return work


def test_noop_repro_reruns_nothing_and_takes_about_a_second(ci_repo):
    started = time.perf_counter()
    result = run(ci_repo, "dvc", "repro")
    elapsed = time.perf_counter() - started
    print(f"\nno-op dvc repro: {elapsed:.2f}s")
    assert stages_that_ran(result.stdout) == set()
    assert "didn't change, skipping" in result.stdout
    # DVC's own floor here is about 1 s; generous for a loaded 2-core CI machine.
    assert elapsed < 15


def test_demo_sight_reads_the_dag_outputs(ci_repo):
    """bench/demo_sight.py on a reproduced DAG: every clip and attribute, both models."""
    script = Path(__file__).resolve().parents[1] / "bench" / "demo_sight.py"
    result = run(ci_repo, sys.executable, str(script), "--root", str(ci_repo), "--captions", "1")
    clips = int(re.search(r"^(\d+) demo clips", result.stdout, re.M).group(1))
    vlm = dict(re.findall(r"^  (\w+): (\d+)/\d+ right$", result.stdout, re.M))
    judged = re.findall(r"^  (\w+): true value first (\d+)/(\d+) ", result.stdout, re.M)
    assert set(vlm) == {"background", "lighting", "figures", "figure_colour", "motion", "danger"}
    assert all(0 <= int(right) <= clips for right in vlm.values())
    # The CI profile's CLIP is barely trained: what it judges is counted, not asserted.
    assert judged and all(0 <= int(first) <= int(trials) == clips for _, first, trials in judged)


def _status(repo: Path) -> dict:
    return json.loads(run(repo, "dvc", "status", "--json").stdout or "{}")


def test_a_reward_weight_invalidates_only_grpo(ci_repo):
    params = ci_repo / "params.yaml"
    original = params.read_text()
    (ci_repo / "weight.yaml").write_text("rewards:\n  weights:\n    clip: 0.5\n")
    try:
        run(ci_repo, "ebmrl", "use-profile", "weight.yaml")
        status = _status(ci_repo)
        # check_params validates every key (it reruns in a second; its output is constant).
        assert set(status) == {"check_params", "grpo"}, status
        assert "rewards" in json.dumps(status["grpo"])
    finally:
        params.write_text(original)
        (ci_repo / "weight.yaml").unlink()
    assert _status(ci_repo) == {}


def test_params_a_then_b_then_a_again_restores_the_training_stages_from_the_run_cache(
    ci_repo, tmp_path
):
    """sft and grpo keep their checkpoints outside their DVC outputs (no ``persist``), so
    DVC's run cache applies to them: after params B, going back to params A restores A's
    models and metrics without training again."""
    work = tmp_path / "repo"
    shutil.copytree(ci_repo, work, symlinks=True)
    params = work / "params.yaml"
    original = params.read_text()
    lock_a = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    trained_a = {
        k: v
        for k, v in outputs_digest(work).items()
        if k.startswith(("models/sft/final", "models/grpo/final"))
    }
    assert trained_a
    changed = original.replace("\n  learning_rate: 5.0e-3\n", "\n  learning_rate: 1.0e-3\n", 1)
    assert changed != original  # sft.learning_rate: the first learning_rate in params.yaml
    params.write_text(changed)
    ran_b = stages_that_ran(run(work, "dvc", "repro").stdout)
    assert {"sft", "grpo"} <= ran_b, ran_b
    assert yaml.safe_load((work / "dvc.lock").read_text())["stages"]["sft"] != lock_a["sft"]
    params.write_text(original)
    started = time.perf_counter()
    again = run(work, "dvc", "repro")
    print(f"\nback to params A, restored from the run cache: {time.perf_counter() - started:.1f}s")
    assert stages_that_ran(again.stdout) <= {"check_params"}, again.stdout[-3000:]
    for stage in ("sft", "grpo"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in again.stdout
    assert "resuming" not in again.stdout and "train_runtime" not in again.stdout
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert {s: lock[s] for s in ("sft", "grpo")} == {s: lock_a[s] for s in ("sft", "grpo")}
    restored = {k: v for k, v in outputs_digest(work).items() if k in trained_a}
    assert restored == trained_a
    assert _status(work) == {}


def test_an_annotation_prompt_invalidates_annotate_and_everything_after_depends_on_it(
    ci_repo,
):
    prompt = ci_repo / "ebmrl" / "prompts" / "annotate_user.txt"
    original = prompt.read_text()
    prompt.write_text(original + "\nDescribe the light as well.\n")
    try:
        assert set(_status(ci_repo)) == {"annotate"}
        # A dry run reruns annotate; the stages after it rerun when its output changes
        # (DVC compares their inputs' hashes), and every one of them depends on it.
        assert stages_that_ran(run(ci_repo, "dvc", "repro", "--dry").stdout) == {"annotate"}
        assert downstream(ci_repo, "annotate") >= {"synthesize", "sft", "grpo"}
        assert downstream(ci_repo, "annotate").isdisjoint({"ingest", "frames", "tiny_models"})
    finally:
        prompt.write_text(original)
    assert _status(ci_repo) == {}


def outputs_digest(repo: Path) -> dict[str, str]:
    """md5 of every pipeline output file (and dvc.lock), by path."""
    import hashlib

    files = [repo / "dvc.lock"] + [
        path
        for folder in ("data", "models", "metrics", "reports")
        for path in (repo / folder).rglob("*")
        if path.is_file()
    ]
    return {str(p.relative_to(repo)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def test_invalid_params_stop_dvc_repro_before_any_output_is_touched(ci_repo):
    """DVC deletes a stage's outputs before running it: the check_params stage, which
    every stage depends on, must fail first. An unknown top-level section (which no stage
    lists, so DVC alone would see nothing to do) and a misspelled key both stop the run,
    named, and every output keeps its bytes (metrics files cannot be restored by DVC)."""
    params = ci_repo / "params.yaml"
    original = params.read_text()
    before = outputs_digest(ci_repo)
    typos = {
        "reward": original + "reward:\n  weights:\n    clip: 0.5\n",
        "grpo.max_completon_length": original.replace(
            "\n  max_completion_length:", "\n  max_completon_length:"
        ),
    }
    try:
        for key, text in typos.items():
            assert text != original
            params.write_text(text)
            result = run(ci_repo, "dvc", "repro", check=False)
            assert result.returncode != 0, result.stdout
            assert f"{key}: unknown key" in result.stdout + result.stderr
            assert stages_that_ran(result.stdout) == {"check_params"}
            assert outputs_digest(ci_repo) == before
    finally:
        params.write_text(original)
    assert _status(ci_repo) == {}


def test_the_data_stages_built_again_from_scratch_give_the_same_bytes(ci_repo, tmp_path):
    """Same input, same bytes: no timing or cache statistics in any data output, so a
    second build (another copy, nothing cached) records the same hashes in dvc.lock."""
    again = copy_working_tree(tmp_path / "repo", profile="ci")
    started = time.perf_counter()
    built = stages_that_ran(run(again, "dvc", "repro", "synthesize").stdout)
    print(f"\ndata stages again, from scratch: {time.perf_counter() - started:.0f}s")
    first, second = (
        yaml.safe_load((repo / "dvc.lock").read_text())["stages"] for repo in (ci_repo, again)
    )
    assert {"tiny_models", "demo_data", "ingest", "frames", "annotate", "synthesize"} <= built
    differ = [stage for stage in sorted(built) if first[stage]["outs"] != second[stage]["outs"]]
    assert not differ, {s: (first[s]["outs"], second[s]["outs"]) for s in differ}


def test_exp_run_with_a_reward_weight_reruns_grpo_and_what_follows(ci_repo, tmp_path):
    """``dvc exp run -S rewards.weights.clip=0.5``: grpo (and what follows, as far as its
    outputs changed) reruns, nothing before grpo does; params.yaml (in the layout DVC
    writes) changes by that one line; ``dvc exp show`` lists it."""
    work = tmp_path / "repo"
    shutil.copytree(ci_repo, work, symlinks=True)
    result = run(work, "dvc", "exp", "run", "-n", "clip-half", "-S", "rewards.weights.clip=0.5")
    ran = stages_that_ran(result.stdout)
    print(f"\nreward weight change reran: {sorted(ran)}")
    # grpo reruns; a stage after it reruns when its inputs changed (DVC compares hashes:
    # on the CI profile the tiny model may come out identical, and then videoqa, which
    # reads only the model, is rightly skipped); nothing before grpo reruns.
    assert "grpo" in ran and ran <= {"check_params", "grpo"} | downstream(work, "grpo")
    assert _status(work) == {}
    numstat = subprocess.run(
        ["git", "diff", "--numstat", "params.yaml"], cwd=work, capture_output=True, text=True
    ).stdout.split()
    assert numstat[:2] == ["1", "1"], run(work, "git", "diff", "params.yaml").stdout
    shown = run(work, "dvc", "exp", "show", "--json").stdout
    experiments = [
        exp
        for entry in json.loads(shown)
        for exp in (entry.get("experiments") or [])
        if exp.get("name") == "clip-half"
    ]
    assert experiments, shown[:2000]
    revs = experiments[0]["revs"][0]
    weights = revs["data"]["params"]["params.yaml"]["data"]["rewards"]["weights"]
    assert weights["clip"] == 0.5
    table = run(work, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    assert "clip-half" in table and "rewards.weights.clip" in table
    # The README's commands: narrow Markdown tables instead of 300-column ones.
    shown = run(work, "dvc", "exp", "show", "--only-changed", "--md", "--no-pager").stdout
    assert "rewards.weights.clip" in shown and "|" in shown
    assert "rewards.weights.answer" not in shown  # unchanged: left out
    diff = run(work, "dvc", "metrics", "diff", "--md").stdout
    assert diff.lstrip().startswith("|") and "metrics/grpo.json" in diff
