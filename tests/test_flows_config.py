"""The deployment files agree with the flows: prefect.yaml's entrypoints and parameters,
the work pools and their concurrency, the GPU job templates, the make targets."""

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import pipeline as flows_pipeline
from flows import services

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deployments() -> dict:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in config["deployments"]}


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    assert path == "flows/pipeline.py"
    return getattr(flows_pipeline, name)


def test_deployments_target_the_cpu_and_gpu_pools(deployments):
    assert deployments["default"]["work_pool"]["name"] == "cpu"
    assert deployments["gpu"]["work_pool"]["name"] == "gpu"
    assert _flow(deployments["default"]["entrypoint"]).name == "ebmrl-pipeline"
    assert _flow(deployments["gpu"]["entrypoint"]).name == "ebmrl-stage"
    # The pipeline hands its GPU stages to the gpu deployment, by its full name.
    assert deployments["default"]["parameters"]["gpu_deployment"] == "ebmrl-stage/gpu"


def test_deployment_parameters_exist_on_their_flows(deployments):
    for deployment in deployments.values():
        flow = _flow(deployment["entrypoint"])
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted, deployment["name"]


def test_a_schedule_example_ships_inactive(deployments):
    (schedule,) = deployments["nightly"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["active"] is False


def test_one_gpu_stage_at_a_time_per_gpu_worker():
    assert services.POOLS["gpu"] == 1 and services.POOLS["cpu"] is None
    assert {"sft", "grpo"} <= set(flows_pipeline.GPU_STAGES)


def test_the_kubernetes_template_asks_for_gpus_and_defines_every_placeholder():
    template = json.loads((REPO / "deploy" / "k8s-gpu-job-template.json").read_text())
    manifest = template["job_configuration"]["job_manifest"]
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert template["variables"]["properties"]["gpus"]["default"] == 1
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
    assert used <= set(template["variables"]["properties"]), used - set(
        template["variables"]["properties"]
    )


def test_the_docker_variant_requests_gpu_devices():
    variables = json.loads((REPO / "deploy" / "docker-gpu-job-variables.json").read_text())
    (request,) = variables["container_create_kwargs"]["device_requests"]
    assert request["capabilities"] == [["gpu"]] and request["driver"] == "nvidia"


def test_make_has_the_service_targets():
    dry = subprocess.run(
        ["make", "-n", "services-up", "services-down", "deploy", "pipeline"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr
    assert "flows.services --run-dir .services up" in dry.stdout
    assert "flows.services --run-dir .services down" in dry.stdout
    assert "prefect --no-prompt deploy --all" in dry.stdout
    assert "deployment run ebmrl-pipeline/default" in dry.stdout
    # The local workers clone the pipeline's commit from this checkout, not from origin.
    assert f'--param "git_url={REPO}"' in dry.stdout


def test_make_gpu_worker_starts_a_gpu_pool_worker_with_a_scratch_folder():
    dry = subprocess.run(
        ["make", "-n", "gpu-worker", "GPU_SCRATCH=/scratch/ebmrl"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr
    assert "EBMRL_SCRATCH=/scratch/ebmrl" in dry.stdout
    assert f"EBMRL_CODE_DIR={REPO}" in dry.stdout  # its flow code: this checkout
    assert "worker start --pool gpu --type process --limit 1" in dry.stdout
    assert flows_pipeline.SCRATCH_ENV == "EBMRL_SCRATCH"


def test_only_the_gpu_deployment_reads_its_code_dir_on_the_worker(deployments):
    """prefect deploy keeps an unset `{{ $VAR }}` for the worker to resolve; make deploy
    unsets EBMRL_CODE_DIR so that the deploying machine's value is never written in."""
    assert deployments["gpu"]["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $EBMRL_CODE_DIR }}"}}
    ]
    assert "pull" not in deployments["default"] and "pull" not in deployments["nightly"]
    dry = subprocess.run(["make", "-n", "deploy"], cwd=REPO, capture_output=True, text=True)
    assert "env -u EBMRL_CODE_DIR" in dry.stdout and "deploy --all" in dry.stdout
    docker = json.loads((REPO / "deploy" / "docker-gpu-job-variables.json").read_text())
    assert docker["env"]["EBMRL_CODE_DIR"] == docker["container_create_kwargs"]["working_dir"]


def test_the_gpu_templates_need_no_shared_volume():
    template = json.loads((REPO / "deploy" / "k8s-gpu-job-template.json").read_text())
    spec = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    (container,) = spec["containers"]
    assert {"name": "scratch", "mountPath": "{{ scratch_path }}"} in container["volumeMounts"]
    docker = json.loads((REPO / "deploy" / "docker-gpu-job-variables.json").read_text())
    assert docker["env"]["EBMRL_SCRATCH"] == "/scratch"
    assert docker["volumes"] == ["/srv/ebmrl-scratch:/scratch"]


def test_services_refuse_to_start_without_credentials(tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code = subprocess.run(
        [sys.executable, "-m", "flows.services", "up", "--run-dir", str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert code.returncode == 1 and "AWS_ACCESS_KEY_ID" in code.stderr
    assert not (tmp_path / "run" / "services.json").exists()


def test_workspaces_by_default_wherever_a_dvc_remote_is_the_shared_path():
    mode = flows_pipeline.workspace_mode
    assert mode(None, "ebmrl-stage/gpu", "storage")[0] is True
    shared, why = mode(None, "ebmrl-stage/gpu", None)
    assert shared is False and "no default DVC remote" in why and "dvc remote add -d" in why
    assert mode(False, "ebmrl-stage/gpu", "storage")[0] is False  # asked: a shared checkout
    assert mode(True, "ebmrl-stage/gpu", None)[0] is True  # asked: the origin check says why not
    assert mode(True, None, "storage") == (
        False,
        "no gpu_deployment: every stage runs in the pipeline's process",
    )
    default = inspect.signature(flows_pipeline.pipeline.fn).parameters["workspaces"].default
    assert default is None
