"""The pipeline's MLflow parent run: stage runs (sft, grpo, evaluate) nest under it.

The flow opens the run before the first stage and hands its id to every stage through
``EBMRL_PARENT_RUN_ID`` (read by ``ebmrl.edge.tracking``), together with the resolved
tracking URI and experiment, so the parent and its children always land in one store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ebmrl.config import load
from ebmrl.edge.tracking import PARENT_ENV, flatten, git_commit, training_experiment_id


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment: str

    def stage_env(self, parent_run_id: str) -> dict[str, str]:
        """What a stage needs to log its run as a child of ``parent_run_id``."""
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_EXPERIMENT_NAME": self.experiment,
            PARENT_ENV: parent_run_id,
        }


def resolve_tracking(repo: str | Path) -> Tracking:
    """The environment's MLflow settings, else params.yaml's ``tracking`` section.

    A relative SQLite path is made absolute against the repository (stages run there).
    """
    section = load(Path(repo) / "params.yaml").tracking
    uri = os.environ.get("MLFLOW_TRACKING_URI") or section.mlflow_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str((Path(repo) / uri[len(prefix) :]).resolve())
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or section.experiment
    return Tracking(uri, experiment)


def start_parent_run(
    tracking: Tracking, repo: str | Path, name: str, params: Mapping[str, object], tags: dict
) -> str:
    """Create the pipeline run (left open: stages add children) and return its id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking.uri)
    experiment_id = training_experiment_id(client, tracking.experiment)
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={"ebmrl.kind": "pipeline", "ebmrl.git_commit": git_commit(repo), **tags},
    )
    for key, value in flatten(dict(params)).items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def finish_parent_run(
    tracking: Tracking,
    run_id: str,
    *,
    succeeded: bool,
    metrics: Mapping[str, float],
    tags: Mapping[str, str] | None = None,
) -> None:
    """Stage timings (metrics) and where stages ran (tags, e.g. the worker of each GPU
    stage), then the run's end."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking.uri)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    client.set_terminated(run_id, status="FINISHED" if succeeded else "FAILED")
