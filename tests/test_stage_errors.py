"""One error contract for every stage (``ebmrl.edge.exit_codes``): a known bad input exits 2
with one ``error:`` line naming the file or key, a network failure exits 75, and neither
prints a traceback; inputs are checked before an MLflow run opens, so a bad input leaves
no FAILED run behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ebmrl import cli
from ebmrl.data.dataset import write_dataset
from ebmrl.demo import profile_book

BIN = Path(sys.executable).parent


def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty folder as the working directory, MLflow pointed at a store inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("EBMRL_PARENT_RUN_ID", raising=False)
    return tmp_path


def empty_dataset(folder: Path, *, profiles: bool = True) -> Path:
    write_dataset(folder, {"train": [], "test": []}, profile_book())
    if not profiles:
        (folder / "profiles.json").unlink()
    return folder


def run_stage(root: Path, capsys, params: dict, *args: str) -> tuple[int, str]:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    code = cli.main(["--params", str(path), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_every_stage_names_its_typical_bad_inputs(workspace, capsys, tiny_models, demo_store):
    root = workspace
    missing = str(root / "nowhere")
    videos = root / "videos"
    videos.mkdir()
    dataset = empty_dataset(root / "empty_dataset")
    traced = root / "traced_dataset"  # traces in <perception>, not the tags asked for
    write_dataset(traced, {"train": demo_store["result"].samples, "test": []}, profile_book())
    authors = {"tags": ["vision", "think", "answer"]}
    no_profiles = empty_dataset(root / "no_profiles", profiles=False)
    http = {"kind": "http", "base_url": closed_port_url(), "model": "m", "max_retries": 0}
    models = {"vlm": str(tiny_models["vlm"])}
    frames = str(demo_store["frames"])
    cases = [
        # (stage arguments, params, words the error line must contain)
        (["ingest"], {"ingest": {"source": missing}}, ["ingest.source", missing]),
        # A fresh checkout: ingest.records still names the demo's records file.
        (["ingest", "--source", str(videos)], {}, ["ingest.records", "--no-records"]),
        (["ingest", "--source", str(videos), "--records", missing], {}, ["--records"]),
        (["frames"], {"frames": {"ingest": missing}}, ["manifest", missing]),
        (["annotate"], {"annotate": {"ingest": missing}}, ["manifest", missing]),
        (
            ["annotate"],
            {"annotate": {"ingest": str(demo_store["ingest"]), "frames": missing}},
            [missing],
        ),
        (
            ["synthesize"],
            {"synthesize": {"ingest": str(demo_store["ingest"]), "profiles": missing}},
            [missing],
        ),
        (["sft"], {"sft": {"dataset": missing}}, ["train split", missing]),
        (["sft"], {"sft": {"dataset": str(dataset), "frames": frames}}, ["train split has 0"]),
        (
            ["sft"],
            {"sft": {"dataset": str(no_profiles), "frames": frames}},
            ["profiles", str(no_profiles)],
        ),
        (["sft"], {"sft": {"dataset": str(dataset), "frames": missing}}, [missing]),
        (
            ["sft"],
            {
                **authors,
                "sft": {"dataset": str(traced), "frames": frames, "target_layout": "released"},
            },
            ["tags", "sft.target_layout"],
        ),
        (["grpo"], {"grpo": {"dataset": str(dataset), "frames": frames}}, ["train split is empty"]),
        (
            ["videoqa"],
            {
                "videoqa": {
                    "benchmarks": [
                        {"name": "q", "format": "nextqa", "annotations": missing, "videos": missing}
                    ]
                }
            },
            [missing],
        ),
        (["evaluate"], {"evaluate": {"dataset": missing}}, ["test split", missing]),
        (["serve", "--model", missing], {"models": models}, [missing]),
        (["tiny-models", "--out", str(root / "params.yaml" / "x")], {}, ["params.yaml"]),
    ]
    for args, params, words in cases:
        code, output = run_stage(root, capsys, params, *args)
        assert code == 2, (args, params, output[-2000:])
        assert "Traceback" not in output, (args, output[-2000:])
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        message = output[output.find("error:") :]  # several params problems: one per line
        assert len(errors) == 1 and all(w in message for w in words), (args, message, words)
    # No input error opened an MLflow run (none left FAILED): the store was never created.
    assert not (root / "mlflow.db").exists()
    # An endpoint that is down, after the stage's own retries: transient, named, exit 75.
    code, output = run_stage(
        root,
        capsys,
        {
            "annotate": {
                "ingest": str(demo_store["ingest"]),
                "frames": str(demo_store["frames"]),
                "backend": http,
            }
        },
        "annotate",
    )
    assert code == 75 and "Traceback" not in output, output[-2000:]


@pytest.mark.slow
def test_the_console_script_prints_no_traceback_for_an_empty_split(tmp_path, demo_store):
    """The real ``ebmrl`` command, as DVC and the flows run it."""
    dataset = empty_dataset(tmp_path / "dataset")
    params = tmp_path / "params.yaml"
    frames = str(demo_store["frames"])
    params.write_text(json.dumps({"sft": {"dataset": str(dataset), "frames": frames}}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run(
        [str(BIN / "ebmrl"), "--params", str(params), "sft"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().startswith("error:") and "train split" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()
