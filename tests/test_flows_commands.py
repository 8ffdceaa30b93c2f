"""What the Prefect tasks run and how they classify failures: real ``dvc`` and ``ebmrl``
commands, no Prefect server (flows.commands imports no Prefect)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ebmrl import cli
from ebmrl.edge.exit_codes import EXIT_INVALID, EXIT_TRANSIENT, FAULT_ONCE_ENV
from flows.commands import (
    CommandFailed,
    CommandResult,
    changed_stages,
    command_env,
    is_transient,
    only_known_stages,
    ready_stages,
    repro_stage_command,
    run_checked,
    run_streaming,
    stage_order,
    stage_upstream,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _dvc_repo(root: Path, stages: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return root


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory) -> Path:
    return _dvc_repo(
        tmp_path_factory.mktemp("dvc_scratch"),
        {
            "ok": {"cmd": "echo made > ok.txt", "outs": ["ok.txt"]},
            "transient": {"cmd": f"echo network down; exit {EXIT_TRANSIENT}"},
            "invalid": {"cmd": f"echo 'error: rewards.weights.clip: bad' >&2; exit {EXIT_INVALID}"},
            "crash": {"cmd": "python -c 'raise SystemExit(1)'"},
            "killed": {"cmd": "kill -9 $$"},
            "missing_dep": {"cmd": "echo never", "deps": ["no/such/input.txt"]},
            "slow": {"cmd": "sleep 4 && echo done > slow.txt", "outs": ["slow.txt"]},
        },
    )


def _outcome(repo: Path, stage: str) -> tuple[bool, CommandFailed | None]:
    lines: list[str] = []
    try:
        run_checked(f"stage {stage}", repro_stage_command(stage), repo, on_line=lines.append)
    except CommandFailed as failure:
        assert lines, "the command's output reaches the line callback"
        return False, failure
    return True, None


@pytest.mark.parametrize(
    ("stage", "transient"),
    [
        ("transient", True),  # the stage's own EXIT_TRANSIENT, through DVC
        ("killed", True),  # a worker killed by a signal (preemption, OOM killer)
        ("invalid", False),  # EXIT_INVALID: params or inputs are wrong
        ("crash", False),  # an unclassified error: fail fast
        ("missing_dep", False),  # DVC's own error: a dependency does not exist
    ],
)
@pytest.mark.slow
def test_failures_through_real_dvc_are_classified(scratch_repo, stage, transient):
    ok, failure = _outcome(scratch_repo, stage)
    assert not ok and failure is not None
    assert failure.transient is transient, failure
    assert f"stage {stage}" in str(failure)


@pytest.mark.slow
def test_the_stage_error_is_in_the_failure_message(scratch_repo):
    _, failure = _outcome(scratch_repo, "invalid")
    assert "rewards.weights.clip: bad" in str(failure)
    assert "exited with 2" in str(failure)


@pytest.mark.slow
def test_a_successful_stage_streams_and_returns(scratch_repo):
    ok, _ = _outcome(scratch_repo, "ok")
    assert ok and (scratch_repo / "ok.txt").read_text().strip() == "made"


@pytest.mark.slow
def test_a_stage_busy_in_another_dvc_run_is_transient(scratch_repo):
    """Two repro runs of one stage at once: DVC refuses the second ("is busy"); retrying
    later helps. (DVC releases its repository lock while a stage command runs and locks
    the stage's outputs instead.)"""
    holder = subprocess.Popen(
        repro_stage_command("slow"),
        cwd=scratch_repo,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert holder.stdout is not None
        for line in holder.stdout:  # the lock is held once the stage runs
            if "Running stage 'slow'" in line:
                break
        result = run_streaming(repro_stage_command("slow"), scratch_repo, on_line=print)
    finally:
        holder.wait(timeout=60)
    assert result.returncode != 0
    assert any("is busy" in line for line in result.tail), result.tail
    assert is_transient(result)


def test_network_patterns_count_only_when_dvc_itself_failed():
    push_failed = CommandResult(
        1, ("ERROR: failed to push data to the cloud - Could not connect to the endpoint URL",)
    )
    assert is_transient(push_failed)
    # A stage that printed a timeout message but then exited 1 decided by itself.
    stage_failed = CommandResult(
        255,
        (
            "warning: request timed out, retrying",
            "ERROR: failed to reproduce 'x': failed to run: ebmrl x, exited with 1",
        ),
    )
    assert not is_transient(stage_failed)
    assert not is_transient(CommandResult(2, ("error: x.y: unknown key",)), through_dvc=False)


@pytest.mark.slow
def test_stage_order_follows_the_dag_of_this_repository(tmp_path):
    """In a copy (a DVC repository of its own): every stage after the stages it needs."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, work / name)
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=work, check=True)
    order = stage_order(work)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert sorted(order) == sorted(stages)
    outs = {
        name: [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
        for name, stage in stages.items()
    }
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            for producer, paths in outs.items():
                if any(dep == p or dep.startswith(f"{p}/") for p in paths):
                    assert order.index(producer) < order.index(name), (producer, name)
    assert order.index("sft") < order.index("grpo")


@pytest.mark.slow  # runs real DVC / trains a model: the full tier only
def test_changed_stages_are_what_dvc_status_says_must_run(tmp_path):
    """The pipeline runs (or hands off) only these: a stage whose upstream has not run yet
    shows once the upstream has run; an up-to-date repository has none."""
    repo = _dvc_repo(
        tmp_path / "repo",
        {
            "first": {"cmd": "echo one > a.txt", "outs": ["a.txt"]},
            "second": {"cmd": "cat a.txt > b.txt", "deps": ["a.txt"], "outs": ["b.txt"]},
        },
    )
    assert changed_stages(repo) == {"first", "second"}
    run_checked("first", repro_stage_command("first"), repo, on_line=lambda _: None)
    assert changed_stages(repo) == {"second"}
    run_checked("second", repro_stage_command("second"), repo, on_line=lambda _: None)
    assert changed_stages(repo) == set()
    (repo / "a.txt").write_text("edited\n")  # an output changed by hand: its stage reruns
    assert changed_stages(repo) == {"first", "second"}


def test_changed_stages_fails_naming_dvc_status(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: [not, a, mapping]\n")
    with pytest.raises(CommandFailed, match="dvc status"):
        changed_stages(tmp_path)


def test_evaluate_and_videoqa_are_ready_together_and_nothing_runs_before_its_upstream(tmp_path):
    """The pipeline starts every ready stage at once (with workspaces): in this DAG
    evaluate and videoqa have no path between them, so both start when grpo is done."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, work / name)
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=work, check=True)
    order = stage_order(work)
    upstream = stage_upstream(work)
    assert {"sft", "annotate", "frames"} <= upstream["grpo"]
    assert "videoqa" not in upstream["evaluate"] and "evaluate" not in upstream["videoqa"]
    finished: set[str] = set()
    started: set[str] = set()
    batches = []
    while len(finished) < len(order):
        ready = ready_stages(order, upstream, finished, started)
        assert ready, (finished, order)
        for stage in ready:
            assert upstream[stage] <= finished  # never before its upstream
        batches.append(set(ready))
        started |= set(ready)
        finished |= set(ready)
    assert any({"evaluate", "videoqa"} <= batch for batch in batches), batches
    # Only a selection's own stages count: its upstream outside it is taken as done.
    selection = [s for s in order if s in ("evaluate", "videoqa")]
    assert ready_stages(selection, upstream, set(), set()) == selection


def test_unknown_stage_names_fail_permanently_naming_them():
    with pytest.raises(CommandFailed) as info:
        only_known_stages(["grpo", "grop"], ["sft", "grpo"])
    assert not info.value.transient and "grop" in str(info.value)
    assert only_known_stages(["grpo", "sft"], ["sft", "grpo"]) == ["sft", "grpo"]


# ------------------------------------------------------------- ebmrl's exit codes
def test_fault_injection_fails_once_with_the_transient_code(tmp_path, monkeypatch, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(f"demo:\n  out: {tmp_path / 'd'}\n  num_clips: 2\n  num_sessions: 2\n")
    marker = tmp_path / "fault-marker"
    monkeypatch.setenv(FAULT_ONCE_ENV, f"demo-data:{marker}")
    assert cli.main(["--params", str(params), "demo-data"]) == EXIT_TRANSIENT
    assert "injected transient fault" in capsys.readouterr().err
    assert marker.exists() and not (tmp_path / "d").exists()
    assert cli.main(["--params", str(params), "demo-data"]) == 0
    assert len(list((tmp_path / "d" / "videos").glob("*.mp4"))) == 2


def test_an_unreachable_s3_endpoint_exits_with_the_transient_code(tmp_path, monkeypatch):
    """A real network failure (nothing listens on the port) maps to EXIT_TRANSIENT."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    params = tmp_path / "params.yaml"
    params.write_text(
        f"ingest:\n  source: s3://videos/clips\n  out: {tmp_path / 'ingest'}\n  records: []\n"
    )
    assert cli.main(["--params", str(params), "ingest"]) == EXIT_TRANSIENT
    s3fs.S3FileSystem.clear_instance_cache()
