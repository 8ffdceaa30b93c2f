"""A gpu worker loads the stage flow from its own copy of the code (``EBMRL_CODE_DIR``,
read when a run starts), not from the path ``prefect deploy`` ran in: real Prefect
server and worker on 127.0.0.1; the deploying checkout is deleted before the run."""

import shutil

import pytest
from conftest import Prefect, copy_working_tree, run

from flows import CODE_DIR_ENV, services

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_a_gpu_worker_runs_the_flow_code_of_its_own_checkout(tmp_path, monkeypatch):
    run_dir = tmp_path / "services"
    run_dir.mkdir()
    monkeypatch.delenv(CODE_DIR_ENV, raising=False)
    started: dict[str, services.Service] = {}
    prefect = None
    try:
        started["prefect"] = services.start_prefect_server(run_dir, services.free_port(), ui=False)
        api_url = started["prefect"].url
        services.wait_until(
            lambda: services.http_ok(api_url + "/health"), started["prefect"], 180, "healthy"
        )
        services.ensure_pools(api_url, {"cpu": None, "gpu": 1})
        env = {"PREFECT_API_URL": api_url, **services.prefect_env(run_dir, api_url)}
        deployer = copy_working_tree(tmp_path / "deployer")
        run(deployer, "prefect", "--no-prompt", "deploy", "--all", env=env)
        prefect = Prefect(api_url)
        deployment = prefect.client.read_deployment_by_name("ebmrl-stage/gpu")
        # The placeholder reaches the deployment unresolved: each worker reads its own.
        assert deployment.pull_steps == [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $EBMRL_CODE_DIR }}"
                }
            }
        ]
        shutil.rmtree(deployer)  # another machine: the deploying checkout is not there
        code = copy_working_tree(tmp_path / "gpu-node" / "code")
        started["gpu"] = services.start_worker(
            tmp_path / "gpu-node", "gpu", api_url, 1, {CODE_DIR_ENV: str(code)}, name="gpu-x"
        )
        flow_run = prefect.trigger("ebmrl-stage/gpu", {"stage": "no_such_stage", "retries": 0})
        flow_run = prefect.wait(flow_run.id, timeout_s=300)
        logs = "\n".join(prefect.logs_until([flow_run.id], "'no_such_stage' not found"))
        # The flow code ran (from the worker's checkout) and DVC named the unknown stage.
        assert "ebmrl stage no_such_stage on worker gpu-x" in logs, (flow_run.state, logs[-3000:])
        assert f"flow code {code})" in logs, logs[-3000:]
        assert "'no_such_stage' not found" in logs, logs[-3000:]
        assert flow_run.state.type.value == "FAILED", flow_run.state
    finally:
        if prefect is not None:
            prefect.close()
        for service in reversed(list(started.values())):
            services.stop(service)
