import os

import pytest
import yaml

from ebmrl.config import TrackingSection
from ebmrl.edge import tracking


def test_flatten_and_truncate():
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x" * 7000})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]"
    assert len(flat["d"]) == tracking.MAX_PARAM_VALUE and flat["d"].endswith("[truncated]")


def test_dvc_inputs_hash_changes_with_deps(tmp_path):
    lock = tmp_path / "dvc.lock"
    entry = {
        "stages": {
            "grpo": {"deps": [{"path": "a", "md5": "1"}], "params": {"params.yaml": {"x": 1}}}
        }
    }
    lock.write_text(yaml.safe_dump(entry))
    first = tracking.dvc_inputs_hash("grpo", lock)
    entry["stages"]["grpo"]["deps"][0]["md5"] = "2"
    lock.write_text(yaml.safe_dump(entry))
    assert tracking.dvc_inputs_hash("grpo", lock) != first
    assert tracking.dvc_inputs_hash("sft", lock) == "unknown"
    assert tracking.dvc_inputs_hash("grpo", tmp_path / "missing.lock") == "unknown"


def test_completions_table_parses_blocks():
    logs = {
        "completion": [
            [
                {
                    "role": "assistant",
                    "content": "<perception>p</perception><think>t</think><answer>a</answer>",
                }
            ],
            "junk",
        ],
        "rewards": {"format": [5.0, -5.0]},
        "advantages": [1.0, -1.0],
        "extra": {"prompt_id": ["s:1", "s:1"]},
    }
    table = tracking.completions_table(logs)
    assert table["prompt_id"] == ["s:1", "s:1"]
    assert table["perception"] == ["p", None] and table["answer"] == ["a", None]
    assert table["reward/format"] == [5.0, -5.0] and table["advantage"] == [1.0, -1.0]


@pytest.mark.slow
def test_stage_run_nests_under_parent_and_restores_env(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("nesting")
    with mlflow.start_run(run_name="pipeline") as parent:
        parent_id = parent.info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", parent_id)
    section = TrackingSection(mlflow_uri="ignored", experiment="nesting")
    with tracking.stage_run("grpo", section, {"grpo": {"beta": 0.04}}) as ml:
        assert "MLFLOW_RUN_ID" not in os.environ  # TRL's callback must not reopen the parent
        child_id = ml.active_run().info.run_id
        ml.log_metric("rewards/format/mean", 1.0, step=1)
    assert os.environ["MLFLOW_RUN_ID"] == parent_id
    child = mlflow.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.tags["ebmrl.stage"] == "grpo"
    assert child.data.params["grpo.beta"] == "0.04"
    assert child.data.metrics["rewards/format/mean"] == 1.0
    # A training experiment: MLflow 3 opens its runs table, not the GenAI overview.
    experiment = mlflow.get_experiment_by_name("nesting")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


@pytest.mark.slow
def test_an_experiment_kind_someone_chose_is_kept(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    fresh = tracking.training_experiment_id(client, "fresh")
    assert client.get_experiment(fresh).tags[tracking.EXPERIMENT_KIND_TAG] == (
        tracking.TRAINING_EXPERIMENT
    )
    chosen = client.create_experiment(
        "chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"}
    )
    assert tracking.training_experiment_id(client, "chosen") == chosen
    assert client.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_disabled_tracking_yields_none():
    with tracking.stage_run("sft", TrackingSection(), {}, enabled=False) as ml:
        assert ml is None
