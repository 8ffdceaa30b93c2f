"""Prefect flows that run the DVC pipeline (deployed by ../prefect.yaml).

``pipeline`` (flow ``ebmrl-pipeline``) validates params.yaml, opens the MLflow parent
run, then reproduces the DVC stages one by one in DAG order (``dvc repro
--single-item <stage>``), so each stage is its own Prefect task run with its own logs
and retries; DVC still decides whether a stage has anything to do. At the end it pushes
the outputs when the repository has a default DVC remote.

GPU stages can run elsewhere: with ``gpu_deployment`` set (e.g. ``ebmrl-stage/gpu``),
the stages in ``gpu_stages`` are handed to that deployment of the one-stage flow
``stage_flow`` (flow ``ebmrl-stage``), whose work pool has GPU workers, and the pipeline
waits for each. Without it everything runs in the pipeline's own process.

Retries: a task is retried (with exponential backoff) only when its failure is
transient (see ``flows.commands``); a params validation error or a missing dependency
fails at once, with the command's last output lines in the error.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import flow_run as current_flow_run
from prefect.tasks import exponential_backoff

from flows.commands import (
    CommandFailed,
    check_params_command,
    command_env,
    default_remote,
    dvc,
    only_known_stages,
    repro_stage_command,
    run_checked,
    stage_order,
)
from flows.mlflow_runs import Tracking, finish_parent_run, resolve_tracking, start_parent_run

# Stages that want a GPU at paper scale (the others are I/O or light CPU work).
GPU_STAGES = ("annotate", "sft", "grpo", "evaluate", "videoqa")
DEFAULT_RETRIES = 2
DEFAULT_RETRY_DELAY_S = 10.0


def retry_only_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry transient command failures, nothing else."""
    error = state.data if isinstance(state.data, BaseException) else None
    return isinstance(error, CommandFailed) and error.transient


def _retrying(task_fn: Any, retries: int, retry_delay_s: float) -> Any:
    return task_fn.with_options(
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_s),
        retry_jitter_factor=0.2,
    )


@task(name="check-params", cache_policy=NO_CACHE)
def check_params(repo: str) -> None:
    """``ebmrl check-params``: a typo fails here in a second, before any stage runs."""
    logger = get_run_logger()
    run_checked(
        "ebmrl check-params",
        check_params_command(),
        repo,
        on_line=logger.info,
        through_dvc=False,
    )


@task(
    name="dvc-stage",
    task_run_name="{stage}",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_only_transient,
)
def run_stage(
    repo: str,
    stage: str,
    tracking_env: dict[str, str],
    force: bool = False,
    pull: bool = False,
) -> float:
    """``dvc repro --single-item <stage>``, its output streamed into the task's log."""
    logger = get_run_logger()
    started = time.monotonic()
    run_checked(
        f"stage {stage}",
        repro_stage_command(stage, force=force, pull=pull),
        repo,
        env=command_env(tracking_env),
        on_line=logger.info,
    )
    return time.monotonic() - started


@task(name="dvc-push", cache_policy=NO_CACHE, retry_condition_fn=retry_only_transient)
def push_outputs(repo: str, targets: Sequence[str] = ()) -> None:
    """``dvc push`` to the default remote (credentials: the environment / AWS config)."""
    logger = get_run_logger()
    run_checked("dvc push", dvc("push", *targets), repo, on_line=logger.info)


def _tracking_for(repo: str, tracking_uri: str | None, experiment: str | None) -> Tracking:
    resolved = resolve_tracking(repo)
    return Tracking(tracking_uri or resolved.uri, experiment or resolved.experiment)


@flow(name="ebmrl-stage", log_prints=True)
def stage_flow(
    stage: str,
    repo: str = ".",
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    force: bool = False,
    pull: bool = False,
    push: bool = False,
    retries: int = DEFAULT_RETRIES,
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
) -> float:
    """One DVC stage (the GPU pool's deployment runs this for the pipeline).

    ``pull``/``push``: exchange data with the DVC remote, for workers that do not share
    the pipeline's file system.
    """
    repo = str(Path(repo).resolve())
    tracking = _tracking_for(repo, tracking_uri, experiment)
    env = tracking.stage_env(parent_run_id) if parent_run_id else {}
    seconds = _retrying(run_stage, retries, retry_delay_s)(repo, stage, env, force, pull)
    if push:
        _retrying(push_outputs, retries, retry_delay_s)(repo, [stage])
    return seconds


def _run_on_pool(deployment: str, stage: str, parameters: dict[str, Any]) -> None:
    """Run ``stage_flow`` for ``stage`` through a deployment and wait for its end."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    logger.info("stage %s: handed to deployment %s", stage, deployment)
    flow_run = run_deployment(
        deployment, parameters={"stage": stage, **parameters}, timeout=None, poll_interval=2
    )
    state = flow_run.state
    if state is None or not state.is_completed():
        name = state.name if state is not None else "unknown"
        raise CommandFailed(
            f"stage {stage} on deployment {deployment}",
            1,
            [f"flow run {flow_run.name} ({flow_run.id}) ended {name}: {state and state.message}"],
            transient=False,  # the stage flow already retried its transient failures
        )


@flow(name="ebmrl-pipeline", log_prints=True)
def pipeline(
    repo: str = ".",
    stages: list[str] | None = None,
    force: bool = False,
    pull: bool = False,
    push: bool | None = None,
    gpu_stages: list[str] = list(GPU_STAGES),  # noqa: B006 (Prefect needs a plain default)
    gpu_deployment: str | None = None,
    retries: int = DEFAULT_RETRIES,
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline in ``repo``, stage by stage.

    stages: only these (in DAG order; their upstream must be up to date), default all.
    force: rerun even unchanged stages. pull: fetch cached outputs from the DVC remote
    instead of recomputing. push: push outputs at the end (default: when a default DVC
    remote is configured). gpu_deployment: where ``gpu_stages`` run (default: here).
    """
    logger = get_run_logger()
    repo = str(Path(repo).resolve())
    check_params(repo)
    order = stage_order(repo)
    selected = only_known_stages(stages, order) if stages else order
    logger.info("stages: %s", " -> ".join(selected))

    tracking = resolve_tracking(repo)
    parent_run_id = start_parent_run(
        tracking,
        repo,
        name=f"pipeline {current_flow_run.name or ''}".strip(),
        params={"stages": selected, "force": force, "pull": pull},
        tags={"prefect.flow_run_id": str(current_flow_run.id or "")},
    )
    logger.info(
        "MLflow: experiment %r, pipeline run %s (%s)",
        tracking.experiment,
        parent_run_id,
        tracking.uri,
    )
    stage_task = _retrying(run_stage, retries, retry_delay_s)
    seconds: dict[str, float] = {}
    succeeded = False
    try:
        for stage in selected:
            started = time.monotonic()
            if gpu_deployment and stage in gpu_stages:
                _run_on_pool(
                    gpu_deployment,
                    stage,
                    {
                        "repo": repo,
                        "parent_run_id": parent_run_id,
                        "tracking_uri": tracking.uri,
                        "experiment": tracking.experiment,
                        "force": force,
                        "pull": pull,
                        "retries": retries,
                        "retry_delay_s": retry_delay_s,
                    },
                )
            else:
                stage_task(repo, stage, tracking.stage_env(parent_run_id), force, pull)
            seconds[stage] = time.monotonic() - started
        remote = default_remote(repo)
        if push or (push is None and remote):
            _retrying(push_outputs, retries, retry_delay_s)(repo)
        succeeded = True
    finally:
        finish_parent_run(
            tracking,
            parent_run_id,
            succeeded=succeeded,
            metrics={f"stage_seconds/{name}": value for name, value in seconds.items()},
        )
    return {"mlflow_parent_run_id": parent_run_id, "stage_seconds": seconds}


if __name__ == "__main__":
    # A local run without a deployment: python -m flows.pipeline
    pipeline()
