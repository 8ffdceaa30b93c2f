"""A stage in its own workspace (``flows.workspace``), with real git and DVC: the
pipeline's clone and a worker's scratch folder share no path; they meet only through a
git origin (a bare repository, as a git server) and a DVC remote. The worker reproduces
the stage and pushes its run-cache entry; the pipeline restores the stage without
running its command; uncommitted changes are refused. The same flow on the S3 server and
a Prefect worker: tests/test_flows_e2e.py."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ebmrl import cli
from ebmrl.edge.exit_codes import EXIT_INVALID, RESTORE_ONLY_ENV
from flows.commands import CommandFailed, changed_stages, repro_stage_command, run_checked
from flows.workspace import (
    DirtyWorkspace,
    pipeline_origin,
    prepare_workspace,
    reproduce_and_push,
    restore_from_run_cache,
)

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

# The stage command: counts its runs in a file outside every workspace (the test's
# bookkeeping) and refuses like `ebmrl <stage>` where it must only be restored.
STAGE_SCRIPT = textwrap.dedent(
    """\
    import os, sys
    from pathlib import Path
    from ebmrl.edge.exit_codes import refused_here
    name = sys.argv[1]
    refused = refused_here(name)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        sys.exit(2)
    with open(os.environ["STAGE_RUNS"], "a") as runs:
        runs.write(name + "\\n")
    Path(sys.argv[3]).write_text(Path(sys.argv[2]).read_text().upper())
    if name == "second":
        Path("b.json").write_text('{"letters": 3}\\n')
    """
)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def two_machines(tmp_path, monkeypatch):
    """A git origin, the pipeline's clone (with ``first`` built and pushed) and a DVC
    remote; the worker's scratch folder is elsewhere."""
    monkeypatch.setenv("STAGE_RUNS", str(tmp_path / "runs.log"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    origin = tmp_path / "git-server" / "ebmrl.git"
    origin.parent.mkdir()
    git(origin.parent, "init", "--bare", "-q", str(origin))
    pipeline = tmp_path / "orchestrator" / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(pipeline))
    stages = {
        "first": {"cmd": "echo one > a.txt", "outs": ["a.txt"]},
        "second": {
            "cmd": "python stage.py second a.txt b.txt",
            "deps": ["stage.py", "a.txt"],
            "outs": ["b.txt"],
            # git-tracked like metrics/sft.json: it must come back through the run cache too
            "metrics": [{"b.json": {"cache": False}}],
        },
        "third": {
            "cmd": "python stage.py third b.txt c.txt",
            "deps": ["stage.py", "b.txt"],
            "outs": ["c.txt"],
        },
    }
    (pipeline / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (pipeline / "stage.py").write_text(STAGE_SCRIPT)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=pipeline, check=True)
    remote = tmp_path / "object-store"
    subprocess.run(
        [str(BIN / "dvc"), "remote", "add", "--local", "-d", "store", str(remote)],
        cwd=pipeline,
        check=True,
    )
    git(pipeline, "add", "-A")
    git(pipeline, "commit", "-q", "-m", "pipeline")
    git(pipeline, "push", "-q", "origin", "HEAD")
    run_checked("first", repro_stage_command("first"), pipeline, on_line=lambda _: None)
    subprocess.run([str(BIN / "dvc"), "push", "-q"], cwd=pipeline, check=True)
    return pipeline, tmp_path / "gpu-node" / "scratch", tmp_path / "runs.log"


@pytest.mark.slow  # runs real DVC / trains a model: the full tier only
def test_a_stage_runs_in_its_own_workspace_and_the_pipeline_restores_it(two_machines):
    pipeline, scratch, runs = two_machines
    origin = pipeline_origin(pipeline)
    assert origin.git_url.endswith("ebmrl.git") and len(origin.commit) == 40
    assert "a.txt" in origin.lock  # built after the commit: travels in the lock text
    lines: list[str] = []
    workspace = prepare_workspace(origin, scratch / "second-run-1", lines.append)
    assert not (workspace / "a.txt").exists()
    reproduce_and_push(workspace, "second", lines.append)
    assert (workspace / "b.txt").read_text() == "ONE\n"
    assert runs.read_text() == "second\n"
    assert any("Running stage 'second'" in line for line in lines)
    # The pipeline: restored from the run cache, the command not run again.
    restored: list[str] = []
    restore_from_run_cache(pipeline, "second", restored.append)
    assert runs.read_text() == "second\n"
    assert any("is cached - skipping run" in line for line in restored), restored
    assert (pipeline / "b.txt").read_text() == "ONE\n"
    assert (pipeline / "b.json").read_text() == '{"letters": 3}\n'  # the uncached metric
    assert "third" in changed_stages(pipeline) and "second" not in changed_stages(pipeline)
    # A stage nobody pushed cannot be restored: it fails, naming why, and is not computed.
    with pytest.raises(CommandFailed, match="not computed here"):
        restore_from_run_cache(pipeline, "third", lambda _: None)
    assert runs.read_text() == "second\n" and not (pipeline / "c.txt").exists()


@pytest.mark.slow  # runs real DVC / trains a model: the full tier only
def test_a_rerun_on_a_fresh_worker_restores_instead_of_recomputing(two_machines):
    pipeline, scratch, runs = two_machines
    origin = pipeline_origin(pipeline)
    reproduce_and_push(prepare_workspace(origin, scratch / "a", print), "second", print)
    again: list[str] = []
    reproduce_and_push(prepare_workspace(origin, scratch / "b", print), "second", again.append)
    assert runs.read_text() == "second\n"
    assert any("is cached - skipping run" in line for line in again)


@pytest.mark.slow  # runs real DVC / trains a model: the full tier only
def test_uncommitted_changes_are_refused_unless_allowed(two_machines):
    pipeline, _, _ = two_machines
    (pipeline / "stage.py").write_text(STAGE_SCRIPT + "# edited\n")
    (pipeline / "notes.txt").write_text("new\n")
    with pytest.raises(DirtyWorkspace) as refused:
        pipeline_origin(pipeline)
    assert "stage.py" in str(refused.value) and "notes.txt" in str(refused.value)
    assert "allow_dirty" in str(refused.value) and not refused.value.transient
    assert pipeline_origin(pipeline, allow_dirty=True).commit
    # What the pipeline itself changes (dvc.lock, the outputs) is not "uncommitted".
    (pipeline / "stage.py").write_text(STAGE_SCRIPT)
    (pipeline / "notes.txt").unlink()
    assert (pipeline / "dvc.lock").exists()
    pipeline_origin(pipeline)


def test_ebmrl_stage_commands_refuse_where_they_may_only_be_restored(monkeypatch, capsys):
    monkeypatch.setenv(RESTORE_ONLY_ENV, "grpo")
    assert cli.main(["--params", str(REPO / "params.yaml"), "grpo"]) == EXIT_INVALID
    assert "not computed here" in capsys.readouterr().err


def test_a_workspace_stage_syncs_its_checkpoints_under_the_dvc_remote():
    from ebmrl.train.checkpoint_sync import URI_ENV
    from flows.workspace import Origin, stage_environment

    origin = Origin("git@example.com:x.git", "0" * 40, "", "s3://bucket/dvc/", "http://s3:8333")
    assert stage_environment(origin, {}) == {
        URI_ENV: "s3://bucket/dvc/checkpoints",
        "AWS_ENDPOINT_URL": "http://s3:8333",
    }
    mine = {URI_ENV: "s3://other/ckpt", "AWS_ENDPOINT_URL": "http://mine"}
    assert stage_environment(origin, mine) == {URI_ENV: "s3://other/ckpt"}
