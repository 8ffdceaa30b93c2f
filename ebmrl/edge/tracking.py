"""MLflow at the edge: one run per stage, nested under the pipeline run when there is one.

Only stage entry points import this module; the core (rewards, data, models) knows
nothing about MLflow. TRL's own ``report_to="mlflow"`` callback logs the step metrics
(``rewards/<name>/mean``, ``kl``, ``completions/*``, ...) into the run opened here,
because it reuses an active run instead of starting its own.

Where the pipeline run comes from: the Prefect flow (or a user) sets
``EBMRL_PARENT_RUN_ID`` (``MLFLOW_RUN_ID`` is accepted too, and cleared so that TRL's
callback does not try to reopen it); the stage run is then created as its child.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ebmrl.config import TrackingSection

PARENT_ENV = "EBMRL_PARENT_RUN_ID"
# MLflow 3 opens an experiment on its GenAI overview unless this tag says it trains models
# (the value MLflow itself uses for "traditional ML"): then its runs table opens.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"
MAX_PARAM_VALUE = 6000  # MLflow's limit for a parameter value (characters)
MAX_PARAMS_PER_BATCH = 100


class TrackingUnavailable(RuntimeError):
    """MLflow is not installed (it comes with the ``pipeline`` extra)."""


def require_mlflow() -> Any:
    """The mlflow module; a stage calls this before any work when it will track."""
    try:
        import mlflow
    except ImportError as exc:
        raise TrackingUnavailable(
            "MLflow is not installed: pip install 'ebmrl[pipeline]', or run the stage "
            "with --no-tracking"
        ) from exc
    return mlflow


def tracking_uri(section: TrackingSection) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or section.mlflow_uri


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; values cut to MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            if len(text) > MAX_PARAM_VALUE:
                text = text[: MAX_PARAM_VALUE - 14] + "...[truncated]"
            flat[name[:250]] = text
    return flat


def metric_values(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested mapping as MLflow metrics: ``{"a": {"b": 1}}`` ->
    ``{"a/b": 1.0}``; other leaves (text, None, lists) are left out."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(metric_values(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def dvc_inputs_hash(stage: str, lock_path: str | Path = "dvc.lock") -> str:
    """A hash of the stage's recorded deps and params in dvc.lock ("unknown" if absent).

    Two runs with the same value trained on exactly the same inputs.
    """
    import yaml

    try:
        lock = yaml.safe_load(Path(lock_path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "unknown"
    entry = (lock.get("stages") or {}).get(stage)
    if not entry:
        return "unknown"
    recorded = {"deps": entry.get("deps", []), "params": entry.get("params", {})}
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]


def training_experiment_id(client: Any, name: str) -> str:
    """The id of experiment ``name`` (created if missing), marked as a model-training
    experiment unless it already has a kind (someone's choice stays)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name)
    else:
        experiment_id = experiment.experiment_id
    if experiment is None or EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT)
    return experiment_id


def parent_run_id() -> str | None:
    return os.environ.get(PARENT_ENV) or os.environ.get("MLFLOW_RUN_ID") or None


@contextlib.contextmanager
def stage_run(
    stage: str,
    section: TrackingSection,
    params: Mapping[str, Any],
    *,
    enabled: bool = True,
) -> Iterator[Any]:
    """Open the MLflow run of one stage; yields the ``mlflow`` module (or None if disabled).

    Logs the stage's params (flattened, truncated), and tags: stage name, git commit,
    the dvc.lock hash of the stage's inputs, and the parent pipeline run.
    """
    if not enabled:
        yield None
        return
    mlflow = require_mlflow()
    mlflow.set_tracking_uri(tracking_uri(section))
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or section.experiment
    mlflow.set_experiment(experiment_id=training_experiment_id(mlflow.MlflowClient(), experiment))
    parent = parent_run_id()
    # TRL's MLflow callback would try to (re)start MLFLOW_RUN_ID: hand it our run instead.
    saved_run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    tags = {
        "ebmrl.stage": stage,
        "ebmrl.git_commit": git_commit(),
        "ebmrl.dvc_inputs": dvc_inputs_hash(stage),
    }
    if parent:
        tags["mlflow.parentRunId"] = parent
    try:
        with mlflow.start_run(run_name=stage, tags=tags) as run:
            items = list(flatten(params).items())
            for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
                mlflow.log_params(dict(items[start : start + MAX_PARAMS_PER_BATCH]))
            try:
                yield mlflow
            finally:
                with contextlib.suppress(Exception):
                    mlflow.flush_async_logging()
            del run
    finally:
        if saved_run_id is not None:
            os.environ["MLFLOW_RUN_ID"] = saved_run_id


def completions_table(logs: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Columns of the sample-completions table from a GRPO trainer's ``_logs`` buffers."""
    from ebmrl import tags

    completions = [tags.as_text(c) for c in logs.get("completion", [])]
    parsed = [tags.parse(c) for c in completions]
    prompt_ids = list(logs.get("extra", {}).get("prompt_id", []))
    table: dict[str, list[Any]] = {
        "prompt_id": prompt_ids if len(prompt_ids) == len(completions) else [""] * len(completions),
        "perception": [p.perception for p in parsed],
        "think": [p.think for p in parsed],
        "answer": [p.answer for p in parsed],
        "completion": completions,
    }
    for name, values in logs.get("rewards", {}).items():
        table[f"reward/{name}"] = list(values)
    if logs.get("advantages"):
        table["advantage"] = list(logs["advantages"])
    return table


def completions_callback(trainer: Any, every: int):
    """A TrainerCallback that logs the latest completions table to MLflow every N steps."""
    from transformers import TrainerCallback

    class CompletionsTable(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if not state.is_world_process_zero or state.global_step % every:
                return
            import mlflow

            if mlflow.active_run() is None:
                return
            table = completions_table(trainer._logs)
            if table["completion"]:
                mlflow.log_table(
                    data=table, artifact_file=f"completions/step_{state.global_step:06d}.json"
                )

    return CompletionsTable()
