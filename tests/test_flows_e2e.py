"""The orchestrated product end to end, on real servers bound to 127.0.0.1: the S3 server
(SeaweedFS, with credentials), the MLflow server (SQLite, artifacts on S3), the Prefect
server and one process worker per work pool (cpu, gpu), all started by the README's
``make services-up``, verbatim and with its defaults (the run folder ``.services``
relative to the checkout), in a fresh clone, and stopped by ``make services-down``
(then by PID, whatever is left, which the test counts as a failure).

One pipeline run on the CI profile (raw videos on S3), deployed from prefect.yaml,
carries most checks: it completes although sft fails transiently once (injected through the environment of
the workers; the GPU pool's stage flow retries it), GPU stages run on the gpu pool, the
stage runs nest under the pipeline's MLflow run, outputs are pushed to the S3 DVC remote
(and pulled back into a fresh copy), and the S3 secret is nowhere it must not be.
A run with an invalid params file fails at once with the key named in the Prefect logs.
"""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import Prefect, copy_working_tree, run, use_s3_remote

from flows import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
SECRET = f"secret-{uuid.uuid4().hex}"  # the S3 server's secret key in this test


def upload_demo_videos(s3_url: str, demo: dict) -> None:
    """The demo clips and records as raw input on S3 (the videos bucket)."""
    client = services.s3_client(s3_url, ("ebmrl-test", SECRET))
    for video in sorted(demo["videos"].glob("*.mp4")):
        client.upload_file(str(video), "ebmrl-videos", f"demo/videos/{video.name}")
    client.upload_file(str(demo["samples"]), "ebmrl-videos", "demo/samples.json")


def make(repo: Path, target: str, env: dict) -> subprocess.CompletedProcess:
    """``make <target>`` in a fresh clone, as the README says it (no install: the clone
    uses this environment, its build files dated before the install stamp)."""
    for name in ("pyproject.toml", "constraints.txt"):
        os.utime(repo / name, (0, 0))
    if not (repo / ".venv").exists():
        (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    result = subprocess.run(
        ["make", target], cwd=repo, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, (
        f"make {target}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory, demo_data):
    """The servers, a deployed CI-profile copy, and one finished pipeline run."""
    root = tmp_path_factory.mktemp("e2e")
    fault_marker = root / "sft-fault-once"
    test_env = {
        "AWS_ACCESS_KEY_ID": "ebmrl-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        **{
            f"EBMRL_{name.upper()}_PORT": str(services.free_port())
            for name in services.DEFAULT_PORTS
        },
        # The workers (and so every stage they run) inherit this: sft fails once, transiently.
        "EBMRL_FAULT_ONCE": f"sft:{fault_marker}",
    }
    saved = {key: os.environ.get(key) for key in test_env}
    started: dict = {}
    prefect = None
    repo = copy_working_tree(root / "repo", profile="ci")
    run_dir = repo / ".services"  # the default SERVICES_DIR, relative to the clone
    make_env = {**os.environ, **test_env}
    try:
        began = time.perf_counter()
        make(repo, "services-up", make_env)
        started = services.read_state(run_dir)
        assert set(started) == {"s3", "mlflow", "prefect", "worker-cpu", "worker-gpu"}
        assert all(service.alive() for service in started.values())
        print(f"\nmake services-up in {time.perf_counter() - began:.0f}s")
        test_env.pop("EBMRL_FAULT_ONCE")  # only the workers get it
        os.environ.update(test_env)
        client_env = services.client_env(started)
        api_url = started["prefect"].url
        prefect_env = {**client_env, **services.prefect_env(run_dir, api_url)}

        use_s3_remote(repo, started["s3"].url, "e2e")
        # Raw videos are read from S3 by the stages (credentials: the workers' environment).
        # The session's demo clips are the CI profile's (6 clips, 3 sessions, seed 0).
        upload_demo_videos(started["s3"].url, demo_data)
        (root / "s3-source.yaml").write_text(
            "ingest:\n  source: s3://ebmrl-videos/demo/videos\n"
            "  records: [s3://ebmrl-videos/demo/samples.json]\n"
        )
        run(repo, "ebmrl", "use-profile", str(root / "s3-source.yaml"))
        began = time.perf_counter()
        run(repo, str(BIN / "prefect"), "--no-prompt", "deploy", "--all", env=prefect_env)
        print(f"prefect deploy --all in {time.perf_counter() - began:.0f}s")

        prefect = Prefect(api_url)
        began = time.perf_counter()
        # The shared-checkout mode (the workers run the stages in this clone; its params
        # are uncommitted): test_flows_workspaces_e2e.py runs the default, workspaces.
        flow_run = prefect.trigger(
            "ebmrl-pipeline/default", {"retry_delay_s": 1, "workspaces": False}
        )
        flow_run = prefect.wait(flow_run.id, timeout_s=1500)
        print(
            f"pipeline flow run {flow_run.state.type.value} in {time.perf_counter() - began:.0f}s"
        )
        yield SimpleNamespace(
            root=root,
            repo=repo,
            services=started,
            client_env=client_env,
            prefect=prefect,
            flow_run=flow_run,
            fault_marker=fault_marker,
        )
    finally:
        if prefect is not None:
            prefect.close()
        started = started or services.read_state(run_dir)  # make services-up cut short
        left = []
        if started:
            down = subprocess.run(
                ["make", "services-down"], cwd=repo, env=make_env, capture_output=True, text=True
            )
            print(down.stdout[-500:], down.stderr[-500:])
            left = [name for name, service in started.items() if service.alive()]
        for service in reversed(list(started.values())):
            services.stop(service)  # by PID, whatever make services-down left running
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not left, f"make services-down left {left} running"


@pytest.mark.timeout(2400)
def test_the_deployed_pipeline_completes_despite_a_transient_failure(stack):
    logs = "\n".join(stack.prefect.logs([stack.flow_run.id]))
    assert stack.flow_run.state.type.value == "COMPLETED", (stack.flow_run.state, logs[-5000:])
    assert stack.fault_marker.exists()  # the fault did fire
    gpu_runs = stack.prefect.children(stack.flow_run.id)
    by_stage = {run.parameters["stage"]: run for run in gpu_runs}
    sft = by_stage["sft"]
    (sft_task,) = [t for t in stack.prefect.task_runs(sft.id) if t.name == "sft"]
    assert sft_task.run_count == 2 and sft_task.state.type.value == "COMPLETED"
    sft_logs = "\n".join(stack.prefect.logs([sft.id]))
    assert "injected transient fault" in sft_logs and "will be retried" in sft_logs
    # The stage's own output is streamed into the Prefect logs.
    assert "Running stage 'sft'" in sft_logs and "SFT model:" in sft_logs
    # ... and relayed into the pipeline's own log, which `--watch` shows.
    assert "[sft] Running stage 'sft'" in logs and "[grpo] Running stage 'grpo'" in logs


def test_a_pipeline_with_nothing_to_do_hands_nothing_to_the_gpu_pool(stack):
    """Only the stages `dvc status` says must run are run or handed off."""
    began = time.perf_counter()
    flow_run = stack.prefect.trigger(
        "ebmrl-pipeline/default", {"retry_delay_s": 1, "workspaces": False}
    )
    flow_run = stack.prefect.wait(flow_run.id, timeout_s=600)
    elapsed = time.perf_counter() - began
    print(f"\nno-op pipeline flow run: {elapsed:.1f}s")
    # The summary is the run's last line: the worker ships it a moment after the final state.
    logs = "\n".join(stack.prefect.logs_until([flow_run.id], "up to date (dvc status)"))
    assert flow_run.state.type.value == "COMPLETED", (flow_run.state, logs[-3000:])
    assert stack.prefect.children(flow_run.id) == []
    assert "up to date (dvc status), not run:" in logs and "grpo" in logs
    ran = {t.name for t in stack.prefect.task_runs(flow_run.id)}
    assert ran.isdisjoint({"annotate", "sft", "grpo", "evaluate", "videoqa", "frames"}), ran


def test_the_stages_read_the_raw_videos_from_s3(stack):
    from ebmrl.data.ingest import read_manifest

    clips = read_manifest(stack.repo / "data" / "ingest")
    assert len(clips) == 6 and all(c.status == "ok" for c in clips)
    assert all(c.uri.startswith("s3://ebmrl-videos/demo/videos/") for c in clips)


def test_gpu_stages_ran_on_the_gpu_pool_and_the_rest_in_the_pipeline(stack):
    gpu_runs = stack.prefect.children(stack.flow_run.id)
    stages = {run.parameters["stage"] for run in gpu_runs}
    assert {"annotate", "sft", "grpo"} <= stages
    assert {"ingest", "frames", "synthesize"}.isdisjoint(stages)
    assert {run.work_pool_name for run in gpu_runs} == {"gpu"}
    assert all(run.name == run.parameters["stage"] for run in gpu_runs)  # named after it
    assert all(run.state.type.value == "COMPLETED" for run in gpu_runs)
    local = {t.name for t in stack.prefect.task_runs(stack.flow_run.id)}
    assert {"tiny_models", "demo_data", "ingest", "frames", "synthesize"} <= local
    assert any(name.startswith("check-params") for name in local)
    assert any(name.startswith("dvc-push") for name in local)


def test_stage_runs_nest_under_the_pipeline_run_with_artifacts_on_s3(stack):
    from mlflow import MlflowClient

    client = MlflowClient(stack.services["mlflow"].url)
    experiment = client.get_experiment_by_name("ebmrl")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [
        r
        for r in runs
        if r.data.tags.get("ebmrl.kind") == "pipeline"
        and r.data.tags.get("prefect.flow_run_id") == str(stack.flow_run.id)
    ]
    assert parent.info.status == "FINISHED"
    # Where each GPU stage ran: the name of its gpu worker (flows.services names them).
    assert parent.data.tags["ebmrl.worker.grpo"].startswith("gpu-worker-")
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert {"sft", "grpo", "videoqa", "evaluate"} <= set(children), sorted(children)
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert "stage_seconds/grpo" in parent.data.metrics
    # Artifacts go through the MLflow server to the S3 bucket.
    s3 = services.s3_client(stack.services["s3"].url, ("ebmrl-test", SECRET))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ebmrl-mlflow").get("Contents", [])]
    assert any(children["sft"].info.run_id in key for key in keys), keys[:20]


def test_dvc_push_then_pull_round_trip_through_s3(stack, tmp_path):
    """The flow pushed to the S3 remote; a clone of the committed result (dvc.lock and
    the metrics in git) pulls the same data and has nothing to rerun."""
    s3 = services.s3_client(stack.services["s3"].url, ("ebmrl-test", SECRET))
    assert s3.list_objects_v2(Bucket="ebmrl-dvc", Prefix="e2e/").get("KeyCount", 0) > 0
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    run(stack.repo, "git", "add", "-A")
    run(stack.repo, *git, "commit", "-qm", "pipeline results")
    run(tmp_path, "git", "clone", "-q", str(stack.repo), "fresh")
    fresh = tmp_path / "fresh"
    assert not (fresh / "models" / "grpo").exists()  # models come from the remote only
    use_s3_remote(fresh, stack.services["s3"].url, "e2e")
    run(fresh, "dvc", "pull")
    status = run(fresh, "dvc", "status").stdout
    assert "up to date" in status, status
    weights = next((stack.repo / "models" / "grpo" / "final").glob("*.safetensors"))
    pulled = fresh / "models" / "grpo" / "final" / weights.name
    assert pulled.read_bytes() == weights.read_bytes()


def test_the_secret_is_in_no_params_lock_config_mlflow_param_or_log(stack):
    from mlflow import MlflowClient

    for name in ("params.yaml", "dvc.lock", ".dvc/config", ".dvc/config.local"):
        path = stack.repo / name
        if path.exists():
            assert SECRET not in path.read_text(), name
    client = MlflowClient(stack.services["mlflow"].url)
    for experiment in client.search_experiments():
        for mlflow_run in client.search_runs([experiment.experiment_id]):
            for value in (*mlflow_run.data.params.values(), *mlflow_run.data.tags.values()):
                assert SECRET not in value, mlflow_run.info.run_name
    logs = stack.prefect.all_logs()
    assert len(logs) > 100
    assert not [line for line in logs if SECRET in line]


@pytest.mark.timeout(600)
def test_an_invalid_params_file_fails_fast_without_retry(stack, tmp_path):
    bad = copy_working_tree(tmp_path / "bad", profile="ci")
    params = bad / "params.yaml"
    params.write_text(params.read_text().replace("clip: 0.8", "clip: -1.0", 1))
    began = time.perf_counter()
    flow_run = stack.prefect.trigger("ebmrl-pipeline/default", {"repo": str(bad)})
    flow_run = stack.prefect.wait(flow_run.id, timeout_s=300)
    elapsed = time.perf_counter() - began
    print(f"\ninvalid params: flow run {flow_run.state.type.value} after {elapsed:.0f}s")
    assert flow_run.state.type.value == "FAILED"
    (check,) = stack.prefect.task_runs(flow_run.id)  # no stage task ever started
    assert check.name.startswith("check-params")
    assert check.run_count == 1 and check.state.type.value == "FAILED"
    logs = "\n".join(stack.prefect.logs_until([flow_run.id], "not retried"))
    assert "rewards.weights.clip" in logs and "not retried" in logs
    assert "Running stage" not in logs
