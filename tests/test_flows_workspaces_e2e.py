"""Issue 15's acceptance: GPU stages on workers that share nothing with the pipeline but
git and the DVC remote, and a worker lost mid-training. Real servers on 127.0.0.1: the
Prefect server, the S3 server (SeaweedFS) as the DVC remote and checkpoint store, MLflow.

The pipeline's clone (its git origin a bare repository, as a git server) and each GPU
worker's folder (started there, its own clone of the code, its workspaces under its own
scratch folder) share no path: the deployment was made in the pipeline's clone, and the
gpu workers load the flow code from their own clones (``EBMRL_CODE_DIR``). The
CI-profile pipeline runs with ``workspaces``; the GPU worker is killed (-9, its whole
process tree) during ``grpo`` once a checkpoint is synced; two fresh workers take over:
``grpo`` is resubmitted and resumes from that checkpoint (read from the trainer's state
in the synced record), ``evaluate`` and ``videoqa`` run at the same time; ``dvc.lock`` in the clone ends complete, ``dvc status`` clean, ``dvc repro``
a no-op.
"""

import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import Prefect, copy_working_tree, run, use_s3_remote

from flows import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
SECRET = f"secret-{uuid.uuid4().hex}"
PREFIX = "accept"


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and every process under it (its flow run, dvc, the trainer)."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for proc in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def synced_grpo_records(client) -> dict[int, dict]:
    """The complete grpo checkpoints on the S3 store, by step."""
    listed = client.list_objects_v2(Bucket="ebmrl-dvc", Prefix=f"{PREFIX}/checkpoints/grpo/")
    records = {}
    for item in listed.get("Contents", []):
        if item["Key"].endswith("/ebmrl_synced.json"):
            body = client.get_object(Bucket="ebmrl-dvc", Key=item["Key"])["Body"].read()
            record = json.loads(body)
            records[record["step"]] = record
    return records


@pytest.mark.timeout(3600)
def test_gpu_stages_on_workers_sharing_nothing_survive_a_killed_worker(tmp_path, monkeypatch):
    began = time.perf_counter()
    credentials = ("ebmrl-test", SECRET)
    for key, value in {
        "AWS_ACCESS_KEY_ID": credentials[0],
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "orchestrator" / "services"
    run_dir.mkdir(parents=True)
    started: dict[str, services.Service] = {}
    prefect = None
    try:
        started["prefect"] = services.start_prefect_server(run_dir, services.free_port(), ui=False)
        started["s3"] = services.start_s3(run_dir, services.free_port(), credentials)
        started["mlflow"] = services.start_mlflow(run_dir, services.free_port(), started["s3"].url)
        for name, path in (("mlflow", "/health"), ("prefect", "/health")):
            services.wait_until(
                lambda n=name, p=path: services.http_ok(started[n].url + p),
                started[name],
                180,
                "healthy",
            )
        api_url = started["prefect"].url
        services.ensure_pools(api_url, {"cpu": None, "gpu": 2})  # two GPU workers later
        client_env = services.client_env(started)
        for key, value in client_env.items():
            monkeypatch.setenv(key, value)
        worker_env = {**client_env, "PREFECT_WORKER_HEARTBEAT_SECONDS": "5"}

        # The pipeline's clone: committed (with more GRPO steps than the CI profile, so
        # that the kill lands between two checkpoints), its origin a bare repository.
        repo = copy_working_tree(tmp_path / "orchestrator" / "clone", profile="ci")
        (tmp_path / "longer.yaml").write_text("grpo:\n  max_steps: 4\n  save_steps: 1\n")
        run(repo, "ebmrl", "use-profile", str(tmp_path / "longer.yaml"))
        origin = tmp_path / "git-server" / "ebmrl.git"
        origin.parent.mkdir()
        subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
        run(repo, *git, "commit", "-qam", "four GRPO steps")
        run(repo, "git", "remote", "add", "origin", str(origin))
        run(repo, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
        use_s3_remote(repo, started["s3"].url, PREFIX)
        prefect_env = {**client_env, **services.prefect_env(run_dir, api_url)}
        run(repo, str(BIN / "prefect"), "--no-prompt", "deploy", "--all", env=prefect_env)
        started["worker-cpu"] = services.start_worker(
            tmp_path / "orchestrator", "cpu", api_url, None, worker_env, name="cpu-main"
        )

        def gpu_worker(name: str) -> services.Service:
            home = tmp_path / f"gpu-node-{name}"  # another machine: started there
            (home / "scratch").mkdir(parents=True)
            clone = ["git", "clone", "-q", "--branch", "main", str(origin), str(home / "code")]
            subprocess.run(clone, check=True)
            env = {
                **worker_env,
                "EBMRL_SCRATCH": str(home / "scratch"),
                "EBMRL_CODE_DIR": str(home / "code"),
            }
            return services.start_worker(home, "gpu", api_url, 1, env, name=f"gpu-{name}")

        started["gpu-a"] = gpu_worker("a")
        prefect = Prefect(api_url)
        # The deployment's defaults: with a default DVC remote, workspaces of their own.
        flow_run = prefect.trigger(
            "ebmrl-pipeline/default", {"retry_delay_s": 1, "worker_lost_s": 20}
        )
        s3 = services.s3_client(started["s3"].url, credentials)
        deadline = time.monotonic() + 1800
        while not synced_grpo_records(s3):
            state = prefect.client.read_flow_run(flow_run.id).state
            assert state is None or not state.is_final(), (state, "before a grpo checkpoint")
            assert time.monotonic() < deadline, "no grpo checkpoint synced"
            time.sleep(0.5)
        kill_tree(started["gpu-a"].pid)
        killed_at = time.perf_counter()
        before_kill = synced_grpo_records(s3)
        assert max(before_kill) < 4, before_kill  # killed before the end
        started["gpu-b"] = gpu_worker("b")
        started["gpu-c"] = gpu_worker("c")
        flow_run = prefect.wait(flow_run.id, timeout_s=1800)
        logs = "\n".join(prefect.logs([flow_run.id]))
        assert flow_run.state.type.value == "COMPLETED", (flow_run.state, logs[-5000:])
        assert "GPU stages: in workspaces of their own on their workers" in logs

        children = {run_.name: run_ for run_ in prefect.children(flow_run.id)}
        assert children["grpo"].state.type.value == "CRASHED"
        resumed = children["grpo-resubmitted-1"]
        assert resumed.state.type.value == "COMPLETED"
        resume_s = (resumed.end_time - resumed.start_time).total_seconds()
        # Resumed from the trainer state of a checkpoint synced before the kill.
        records = synced_grpo_records(s3)
        assert max(records) == 4
        assert records[4]["started_at_step"] in before_kill, (records, before_kill)
        assert records[4]["started_at_step"] >= 1
        assert records[4]["worker"] in {"gpu-b", "gpu-c"}

        # evaluate and videoqa ran at the same time, on two workers.
        spans = {}
        for stage in ("evaluate", "videoqa"):
            (task,) = [t for t in prefect.task_runs(children[stage].id) if t.name == stage]
            spans[stage] = (task.start_time, task.end_time)
        assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans
        runners = {
            line.split(" on worker ")[1].split()[0]
            for stage in ("evaluate", "videoqa")
            for line in prefect.logs([children[stage].id])
            if " on worker " in line
        }
        assert runners == {"gpu-b", "gpu-c"}, runners
        # Every GPU stage ran the flow code of its worker's own clone, not the deployment's.
        for run_ in children.values():
            (line,) = [x for x in prefect.logs([run_.id]) if " on worker " in x]
            node = line.split(" on worker ")[1].split()[0].removeprefix("gpu-")
            assert f"flow code {tmp_path / f'gpu-node-{node}' / 'code'})" in line, line

        # The clone: every stage in dvc.lock, nothing to do for DVC.
        stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
        assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == stages
        assert json.loads(run(repo, "dvc", "status", "--json").stdout or "{}") == {}
        again = run(repo, "dvc", "repro").stdout
        assert "Running stage" not in again, again[-3000:]
        assert not list((tmp_path / "orchestrator" / "clone" / "models").glob("*/checkpoints"))
        print(
            f"\nacceptance test: {time.perf_counter() - began:.0f}s in all; "
            f"kill to completion {time.perf_counter() - killed_at:.0f}s; "
            f"resumed grpo flow run {resume_s:.0f}s"
        )
    finally:
        if prefect is not None:
            prefect.close()
        for service in reversed(list(started.values())):
            services.stop(service)
        assert not [name for name, service in started.items() if service.alive()]
