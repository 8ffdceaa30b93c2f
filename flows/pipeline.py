"""Prefect flows that run the DVC pipeline (deployed by ../prefect.yaml).

``pipeline`` (flow ``ebmrl-pipeline``) validates params.yaml, opens the MLflow parent
run, then reproduces the DVC stages one by one in DAG order (``dvc repro
--single-item <stage>``), so each stage is its own Prefect task run with its own logs
and retries. Only the stages ``dvc status`` says must run are run (or handed off): a
pipeline with nothing to do costs what DVC's own check costs. At the end it pushes the
outputs when the repository has a default DVC remote.

GPU stages can run elsewhere: with ``gpu_deployment`` set (e.g. ``ebmrl-stage/gpu``),
the stages in ``gpu_stages`` are handed to that deployment of the one-stage flow
``stage_flow`` (flow ``ebmrl-stage``), whose work pool has GPU workers, and the pipeline
waits for each: the stage's flow run is named after the stage, and its log lines are
relayed into the pipeline's log (``prefect deployment run ... --watch`` shows them).
Without it everything runs in the pipeline's own process.

Retries: a task is retried (with exponential backoff) only when its failure is
transient (see ``flows.commands``); a params validation error or a missing dependency
fails at once, with the command's last output lines in the error.
"""

from __future__ import annotations

import contextvars
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import flow_run as current_flow_run
from prefect.tasks import exponential_backoff

from flows import CODE_DIR
from flows.commands import (
    CommandFailed,
    changed_stages,
    check_params_command,
    command_env,
    default_remote,
    dvc,
    only_known_stages,
    ready_stages,
    repro_stage_command,
    run_checked,
    stage_order,
    stage_upstream,
)
from flows.mlflow_runs import Tracking, finish_parent_run, resolve_tracking, start_parent_run
from flows.workspace import (
    Origin,
    pipeline_origin,
    prepare_workspace,
    reproduce_and_push,
    restore_from_run_cache,
    stage_environment,
)

# Stages that want a GPU at paper scale (the others are I/O or light CPU work).
GPU_STAGES = ("annotate", "sft", "grpo", "evaluate", "videoqa")
DEFAULT_RETRIES = 2
DEFAULT_RETRY_DELAY_S = 10.0
# A stage's worker silent this long (no Prefect heartbeat) is taken for lost.
DEFAULT_WORKER_LOST_S = 120.0
_WORKER_LINE = re.compile(r"ebmrl stage \S+ on worker (\S+)")
# Where a GPU worker makes the stages' own workspaces (a scratch volume on a cluster).
SCRATCH_ENV = "EBMRL_SCRATCH"
DEFAULT_SCRATCH = Path.home() / ".cache" / "ebmrl" / "workspaces"


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


@task(name="workspace", task_run_name="workspace-{stage}", cache_policy=NO_CACHE)
def make_workspace(origin: dict[str, Any], stage: str, folder: str) -> str:
    """Clone the pipeline's commit into this run's own folder, with its dvc.lock and
    DVC remote; the log says where (worker, host, folder) and at which commit."""
    logger = get_run_logger()
    logger.info("stage %s: workspace %s", stage, folder)
    return str(prepare_workspace(Origin(**origin), folder, logger.info))


@task(
    name="dvc-stage-in-workspace",
    task_run_name="{stage}",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_only_transient,
)
def run_stage_in_workspace(
    workspace: str, stage: str, tracking_env: dict[str, str], force: bool = False
) -> float:
    """``dvc repro --single-item --pull <stage>`` (inputs and run cache from the remote),
    then ``dvc push --run-cache <stage>``; a Prefect artifact says where it ran (worker,
    host, workspace, commit) and what DVC pulled, ran and pushed."""
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    started = time.monotonic()
    summary = reproduce_and_push(workspace, stage, logger.info, env=tracking_env, force=force)
    seconds = time.monotonic() - started
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True
    ).stdout.strip()
    rows = [
        ("worker", os.environ.get("PREFECT__WORKER_NAME", "")),
        ("host", socket.gethostname()),
        ("workspace", workspace),
        ("commit", commit),
        ("seconds", f"{seconds:.1f}"),
        ("pulled / ran", "<br>".join(summary["repro"]) or "-"),
        ("pushed", "<br>".join(summary["push"]) or "-"),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    create_markdown_artifact(
        markdown=f"## Stage {stage}\n\n| | |\n|---|---|\n{table}\n",
        description=f"where stage {stage} ran and what it exchanged with the DVC remote",
    )
    return seconds


@task(
    name="restore",
    task_run_name="restore-{stage}",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_only_transient,
)
def restore_stage(repo: str, stage: str) -> None:
    """The stage's outputs and dvc.lock entry, from the run cache its worker pushed."""
    restore_from_run_cache(repo, stage, get_run_logger().info)


def workspace_mode(
    workspaces: bool | None, gpu_deployment: str | None, remote: str | None
) -> tuple[bool, str]:
    """Whether the GPU stages run in workspaces of their own, and why (for the log).

    ``workspaces`` None (the default): yes when they go to a deployment and the checkout
    has a default DVC remote, the one path a worker that shares nothing with this
    machine can reach; without a remote the workers must share this checkout.
    """
    if not gpu_deployment:
        return False, "no gpu_deployment: every stage runs in the pipeline's process"
    if workspaces is not None:
        return workspaces, f"workspaces={workspaces} as asked"
    if remote:
        return True, (
            f"in workspaces of their own on their workers, their data through the "
            f"default DVC remote {remote!r}"
        )
    return False, (
        "no default DVC remote: the GPU workers run the stages in this checkout, which they "
        "must share (dvc remote add -d NAME URL for workers that share nothing)"
    )


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
    origin: dict[str, Any] | None = None,
    scratch: str | None = None,
) -> float:
    """One DVC stage (the GPU pool's deployment runs this for the pipeline).

    ``origin`` (from a pipeline with ``workspaces``): run in a workspace of this run's
    own, a clone of the pipeline's commit under ``scratch`` (default: ``EBMRL_SCRATCH``,
    else ~/.cache/ebmrl/workspaces), inputs pulled from and outputs with their run-cache
    entry pushed to the DVC remote. Without it, the stage runs in ``repo`` (a checkout
    shared with the pipeline); ``pull``/``push`` then exchange data with the DVC remote.
    """
    worker = os.environ.get("PREFECT__WORKER_NAME") or "none"
    # The pipeline reads the worker's name from this line, to watch its heartbeat.
    get_run_logger().info(
        "ebmrl stage %s on worker %s (host %s, flow code %s)",
        stage,
        worker,
        socket.gethostname(),
        CODE_DIR,
    )
    if origin is not None:
        root = Path(scratch or os.environ.get(SCRATCH_ENV) or DEFAULT_SCRATCH)
        folder = root / f"{stage}-{current_flow_run.id or os.getpid()}"
        workspace = make_workspace(origin, stage, str(folder))
        tracking = _tracking_for(workspace, tracking_uri, experiment)
        env = tracking.stage_env(parent_run_id) if parent_run_id else {}
        env.update(stage_environment(Origin(**origin), os.environ))
        seconds = _retrying(run_stage_in_workspace, retries, retry_delay_s)(
            workspace, stage, env, force
        )
        # Everything it made is on the remote now; a failed run's folder stays, to look at.
        shutil.rmtree(workspace, ignore_errors=True)
        return seconds
    repo = str(Path(repo).resolve())
    tracking = _tracking_for(repo, tracking_uri, experiment)
    env = tracking.stage_env(parent_run_id) if parent_run_id else {}
    seconds = _retrying(run_stage, retries, retry_delay_s)(repo, stage, env, force, pull)
    if push:
        _retrying(push_outputs, retries, retry_delay_s)(repo, [stage])
    return seconds


def _worker_silent_for(client: Any, pool: str, worker: str) -> float | None:
    """Seconds since the named worker's last heartbeat (None: not known to the pool)."""
    from datetime import UTC, datetime

    found = [w for w in client.read_workers_for_work_pool(pool) if w.name == worker]
    if not found or found[0].last_heartbeat_time is None:
        return None
    return (datetime.now(UTC) - found[0].last_heartbeat_time).total_seconds()


def follow_flow_run(
    flow_run_id: Any,
    on_line: Any,
    poll_interval: float = 2.0,
    drain_s: float = 3.0,
    lost_after_s: float | None = None,
) -> Any:
    """Poll a flow run until it ends; hand each of its log lines to ``on_line`` as they
    arrive (the pipeline relays a stage's log into its own, which ``--watch`` shows).

    ``lost_after_s``: a running flow run whose worker (named in its first log line, see
    ``stage_flow``) has sent no heartbeat for that long is set Crashed: Prefect itself
    leaves the run of a killed worker or machine Running for ever.
    Returns the finished flow run and the name of its worker ("" if none was named)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        LogFilter,
        LogFilterFlowRunId,
        LogFilterTimestamp,
    )
    from prefect.client.schemas.sorting import LogSort
    from prefect.states import Crashed

    seen: set[Any] = set()
    newest = None
    ended_at = None
    worker: str | None = None
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            while True:  # every line since the newest one relayed
                log_filter = LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
                    timestamp=LogFilterTimestamp(after_=newest) if newest else None,
                )
                page = client.read_logs(
                    log_filter=log_filter, limit=200, sort=LogSort.TIMESTAMP_ASC
                )
                fresh = [log for log in page if log.id not in seen]
                for log in fresh:
                    seen.add(log.id)
                    on_line(log.message)
                    if worker is None and (match := _WORKER_LINE.search(log.message)):
                        worker = match.group(1)
                if page:
                    newest = page[-1].timestamp
                if len(fresh) < 200:
                    break
            state = flow_run.state
            if lost_after_s and worker and state is not None and state.is_running():
                silent = _worker_silent_for(client, flow_run.work_pool_name, worker)
                if silent is not None and silent > lost_after_s:
                    message = f"worker {worker} lost: no heartbeat for {silent:.0f}s"
                    on_line(message)
                    client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
                    continue
            if flow_run.state is not None and flow_run.state.is_final():
                # The worker ships its last lines a moment after the state changes.
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at >= drain_s:
                    return flow_run, worker or ""
            time.sleep(poll_interval)


def _run_on_pool(
    deployment: str,
    stage: str,
    parameters: dict[str, Any],
    resubmissions: int = DEFAULT_RETRIES,
    lost_after_s: float = DEFAULT_WORKER_LOST_S,
) -> str:
    """Run ``stage_flow`` for ``stage`` through a deployment (its flow run named after the
    stage), relay its log lines into ours, and wait for its end. A run that crashed (its
    worker or machine died) is submitted again, up to ``resubmissions`` times: another
    worker takes it, and a training stage resumes from its synced checkpoints. Returns
    the name of the worker that ran it."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    for attempt in range(resubmissions + 1):
        flow_run = run_deployment(
            deployment,
            parameters={"stage": stage, **parameters},
            flow_run_name=stage if attempt == 0 else f"{stage}-resubmitted-{attempt}",
            timeout=0,  # return at once: follow_flow_run waits and relays the log
        )
        logger.info(
            "stage %s: handed to deployment %s (flow run %s)", stage, deployment, flow_run.id
        )
        flow_run, worker = follow_flow_run(
            flow_run.id,
            lambda line: logger.info("[%s] %s", stage, line),
            lost_after_s=lost_after_s,
        )
        state = flow_run.state
        if state is not None and state.is_completed():
            return worker
        if state is not None and state.is_crashed() and attempt < resubmissions:
            logger.warning(
                "stage %s: flow run %s crashed (%s); resubmitting (%d of %d)",
                stage,
                flow_run.id,
                state.message,
                attempt + 1,
                resubmissions,
            )
            continue
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
    workspaces: bool | None = None,
    git_url: str | None = None,
    allow_dirty: bool = False,
    worker_lost_s: float = DEFAULT_WORKER_LOST_S,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline in ``repo``, stage by stage.

    stages: only these (in DAG order; their upstream must be up to date), default all.
    force: rerun even unchanged stages. pull: fetch cached outputs from the DVC remote
    instead of recomputing. push: push outputs at the end (default: when a default DVC
    remote is configured). gpu_deployment: where ``gpu_stages`` run (default: here).
    workspaces: each GPU stage runs in a workspace of its own on its worker (a clone of
    this checkout's commit from ``git_url``, default its ``origin``; data through the
    DVC remote), then is restored here from DVC's run cache; uncommitted changes are
    refused unless ``allow_dirty``. Default (None): workspaces whenever the checkout has
    a default DVC remote (``workspace_mode``); False: the workers share this checkout.
    A GPU stage whose flow run crashed, or whose worker sent no heartbeat for
    ``worker_lost_s``, is resubmitted up to ``retries`` times.
    """
    logger = get_run_logger()
    repo = str(Path(repo).resolve())
    check_params(repo)
    remote = default_remote(repo) if gpu_deployment and workspaces is None else None
    workspaces, why = workspace_mode(workspaces, gpu_deployment, remote)
    logger.info("GPU stages: %s", why)
    if workspaces:
        pipeline_origin(repo, git_url, allow_dirty)  # refuses a dirty checkout now
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
    # What `dvc status` says must run; asked again after each stage that ran (its outputs
    # may change what the next ones see). Up-to-date stages cost nothing: no task run, no
    # hand-off to the gpu pool.
    pending = None if force else changed_stages(repo)
    skipped: list[str] = []
    workers: dict[str, str] = {}  # GPU stage -> the worker that ran it
    # One DVC command at a time in this checkout (DVC's repository lock); with
    # workspaces, GPU stages with no path between them run on their workers side by side.
    dvc_here = threading.Lock()
    side_by_side = bool(workspaces and gpu_deployment)
    upstream = stage_upstream(repo)

    def run_one(stage: str) -> None:
        started = time.monotonic()
        if gpu_deployment and stage in gpu_stages:
            handed = {
                "repo": repo,
                "parent_run_id": parent_run_id,
                "tracking_uri": tracking.uri,
                "experiment": tracking.experiment,
                "force": force,
                "pull": pull,
                "retries": retries,
                "retry_delay_s": retry_delay_s,
            }
            if workspaces:
                with dvc_here:  # the worker pulls what this checkout built: push it first
                    _retrying(push_outputs, retries, retry_delay_s)(repo)
                    origin = pipeline_origin(repo, git_url, allow_dirty=True)  # checked above
                handed["origin"] = origin.as_parameters()
            workers[stage] = _run_on_pool(gpu_deployment, stage, handed, retries, worker_lost_s)
            if workspaces:
                with dvc_here:
                    _retrying(restore_stage, retries, retry_delay_s)(repo, stage)
        else:
            with dvc_here:
                stage_task(repo, stage, tracking.stage_env(parent_run_id), force, pull)
        seconds[stage] = time.monotonic() - started

    finished: set[str] = set()
    started: set[str] = set()
    running: dict[Future, str] = {}
    executor = ThreadPoolExecutor(max_workers=max(1, len(selected)) if side_by_side else 1)
    try:
        while len(finished) < len(selected):
            ready = ready_stages(selected, upstream, finished, started)
            for stage in ready:
                started.add(stage)
                if pending is not None and stage not in pending:
                    skipped.append(stage)
                    finished.add(stage)
                    continue
                # Each thread needs the flow run's context (logger, task runs).
                running[executor.submit(contextvars.copy_context().run, run_one, stage)] = stage
            if not running:
                if not ready:
                    raise RuntimeError(f"no stage can start: {sorted(set(selected) - finished)}")
                continue  # skipped stages may make others ready
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                future.result()  # a failed stage stops the pipeline
                finished.add(stage)
            if pending is not None:
                with dvc_here:
                    pending = changed_stages(repo)
        if skipped:
            logger.info("up to date (dvc status), not run: %s", ", ".join(skipped))
        # Nothing ran: nothing new to push (a no-op pipeline costs what `dvc status` costs).
        remote = default_remote(repo) if (push or seconds) else None
        if push or (push is None and remote):
            _retrying(push_outputs, retries, retry_delay_s)(repo)
        succeeded = True
    finally:
        executor.shutdown(wait=True, cancel_futures=True)  # running stages end first
        finish_parent_run(
            tracking,
            parent_run_id,
            succeeded=succeeded,
            metrics={f"stage_seconds/{name}": value for name, value in seconds.items()},
            tags={f"ebmrl.worker.{name}": worker for name, worker in workers.items()},
        )
    return {
        "mlflow_parent_run_id": parent_run_id,
        "stage_seconds": seconds,
        "skipped": skipped,
        "workers": workers,
    }


if __name__ == "__main__":
    # A local run without a deployment: python -m flows.pipeline
    pipeline()
