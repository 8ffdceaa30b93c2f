"""The training stages on the tiny models and demo data: learning signal, tracking,
resume after kill -9, multi-process, bad input."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_SAMPLING

from ebmrl import config
from ebmrl.data.dataset import write_dataset
from ebmrl.data.split import split_by_session
from ebmrl.frame_store import MissingClipError
from ebmrl.models import load_vlm
from ebmrl.schema import load_profiles
from ebmrl.train.grpo import nonfinite_guard, train_grpo
from ebmrl.train.sft import EmptyTrainingSet, train_sft
from ebmrl.train.summary import reward_summary, window_means
from ebmrl.train.training_set import TrainingInputs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REWARDS = ("format", "answer", "clip", "pcg")

# Sized for the tiny random-weight model (see params.yaml): high learning rates, short runs.
SFT_SETTINGS = {
    "learning_rate": 1e-2,
    "epochs": 40,
    "per_device_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.05,
    "logging_steps": 5,
    "save_steps": 1000,
    "eval_samples": 4,
    "eval_max_new_tokens": 160,
    "torch_threads": None,
}
GRPO_SETTINGS = {
    "learning_rate": 1e-4,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "per_device_batch_size": 8,
    "gradient_accumulation_steps": 2,
    "max_completion_length": 160,
    "logging_steps": 1,
    "save_steps": 1000,
    "completions_every": 10,
    "torch_threads": None,
}


@pytest.fixture(scope="module")
def demo_training_set(tmp_path_factory, tiny_models):
    """A larger demo than the session one (the format must be learnable from it): rendered,
    ingested and framed with the real stage functions."""
    from ebmrl import demo
    from ebmrl.data import frames, ingest

    root = tmp_path_factory.mktemp("training_demo")
    paths = demo.generate(root / "demo", seed=1, num_clips=16, num_sessions=4, samples_per_clip=2)
    result = ingest.ingest(
        str(paths["videos"]), records=[str(paths["samples"])], extensions=["mp4"]
    )
    clips = [c for c in result.clips if c.status == "ok"]
    tasks = [frames.FrameTask(c.clip_id, c.uri, c.sha256, c.width, c.height) for c in clips]
    frames.build_store(
        tasks,
        root / "frames",
        embedder=frames.ClipEmbedder.load(str(tiny_models["clip"]), None),
        settings=frames.store_settings(DEMO_SAMPLING, str(tiny_models["clip"]), None),
        sampling=DEMO_SAMPLING,
        workers=0,
    )
    return {"samples": result.samples, "profiles": paths["profiles"], "frames": root / "frames"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, demo_training_set):
    """The demo samples split by session, written as the synthesize stage writes them."""
    train, test = split_by_session(demo_training_set["samples"], test_fraction=0.25, seed=0)
    folder = tmp_path_factory.mktemp("dataset")
    write_dataset(
        folder, {"train": train, "test": test}, load_profiles(demo_training_set["profiles"])
    )
    return folder


@pytest.fixture(scope="module")
def frames_dir(demo_training_set):
    return demo_training_set["frames"]


@pytest.fixture(scope="module")
def inputs(dataset, frames_dir):
    from ebmrl.stages.inputs import load_training_inputs

    return load_training_inputs(str(dataset), str(frames_dir))


def params_for(tmp_path: Path, tiny_models, **sections) -> config.Params:
    data = {
        "models": {"vlm": str(tiny_models["vlm"]), "clip": str(tiny_models["clip"]),
                   "text_encoder": str(tiny_models["text_encoder"]), "text_encoder_layers": 2},
        "rewards": {"pcg": {"leak_filter": {"model": str(tiny_models["text_encoder"])}}},
        "sft": {**SFT_SETTINGS, "out": str(tmp_path / "sft")},
        "grpo": {**GRPO_SETTINGS, "out": str(tmp_path / "grpo")},
    }  # fmt: skip
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return config.validate(data)


def run_grpo(params: config.Params, inputs: TrainingInputs, **kwargs):
    """``train_grpo`` on the sections of ``params`` the GRPO stage passes it."""
    return train_grpo(
        params.grpo, params.models, params.rewards, inputs, tags=params.tag_names(), **kwargs
    )


@pytest.fixture(scope="module")
def sft_result(tmp_path_factory, tiny_models, inputs):
    out = tmp_path_factory.mktemp("sft_run")
    params = params_for(out, tiny_models)
    model, processor = load_vlm(tiny_models["vlm"])
    return train_sft(params.sft, params.models, inputs, model=model, processor=processor)


# ------------------------------------------------------------------ learning signal
@pytest.mark.slow
def test_sft_teaches_the_format_on_held_out_samples(sft_result):
    metrics = sft_result.metrics
    assert metrics["held_out_samples"] > 0
    assert metrics["format_before"] < 0  # the random model writes no blocks
    assert metrics["format_after"] > metrics["format_before"] + 2.0, metrics
    assert (sft_result.final_dir / "config.json").is_file()
    reloaded, _ = load_vlm(sft_result.final_dir)  # from_pretrained-loadable
    assert type(reloaded).__name__ == "Qwen2_5_VLForConditionalGeneration"


@pytest.mark.slow
def test_grpo_logs_every_reward_component_at_every_step(tmp_path, tiny_models, inputs, sft_result):
    params = params_for(
        tmp_path, tiny_models, grpo={"init_model": str(sft_result.final_dir), "max_steps": 4}
    )
    model, processor = load_vlm(sft_result.final_dir)
    result = run_grpo(params, inputs, model=model, processor=processor)
    history = result.log_history
    assert [step["step"] for step in history] == [1, 2, 3, 4]
    for name in REWARDS:
        assert all(math.isfinite(step[f"rewards/{name}/mean"]) for step in history), name
    for key in ("rewards/pcg/baseline_queries", "rewards/clip/truncation_rate", "kl", "reward"):
        assert all(key in step for step in history), key
    assert (result.final_dir / "model.safetensors").is_file()


def window_margin(values: list[float], window: int) -> tuple[float, float, float]:
    """Means of the first and last ``window`` values, and the standard error of their
    difference (each window's sample standard deviation over the root of its size)."""
    import statistics

    first, last = values[:window], values[-window:]
    se = math.sqrt(statistics.variance(first) / len(first) + statistics.variance(last) / len(last))
    return statistics.fmean(first), statistics.fmean(last), se


# The learning check's GRPO seeds: `make test` runs 0; EBMRL_LEARNING_SEEDS=0,1,2 runs three.
LEARNING_SEEDS = [int(x) for x in os.environ.get("EBMRL_LEARNING_SEEDS", "0").split(",")]
LEARNING_STEPS, LEARNING_WINDOW = 40, 10


@pytest.mark.slow
@pytest.mark.parametrize("seed", LEARNING_SEEDS)
def test_grpo_raises_the_total_reward(tmp_path, tiny_models, inputs, sft_result, seed):
    """GRPO with the four rewards raises the total reward and the CLIP reward on prompts
    SFT never saw, by at least three standard errors of the window means' difference.

    The prompts are the held-out split: on its own training prompts the SFT model is
    already near the ceiling, so GRPO has nothing left to learn there. All four prompts
    in every step (gradient accumulation 4, G = 8 each): a step's mean reward differs from
    another's by what the policy learned and by sampling, never by which prompts it drew.
    The CLIP reward is the trained tiny CLIP's: it pays for perceptions that state what
    the frames show.
    """
    params = params_for(
        tmp_path, tiny_models,
        grpo={"init_model": str(sft_result.final_dir), "max_steps": LEARNING_STEPS,
              "seed": seed, "gradient_accumulation_steps": 4},
    )  # fmt: skip
    unseen = TrainingInputs(inputs.test[:4], [], inputs.frames, inputs.profiles)
    assert len(unseen.train) == 4
    assert not {s.sample_id for s in unseen.train} & {s.sample_id for s in inputs.train}
    model, processor = load_vlm(sft_result.final_dir)
    result = run_grpo(params, unseen, model=model, processor=processor)
    history = result.log_history
    assert len(history) == LEARNING_STEPS
    first, last, se = window_margin([step["reward"] for step in history], LEARNING_WINDOW)
    clip_first, clip_last, clip_se = window_margin(
        [step["rewards/clip/mean"] for step in history], LEARNING_WINDOW
    )
    parts = {
        name: window_means([step[f"rewards/{name}/mean"] for step in history], LEARNING_WINDOW)
        for name in REWARDS
    }
    print(
        f"GRPO (seed {seed}) total reward: first {LEARNING_WINDOW} steps {first:.3f}, "
        f"last {last:.3f}, gain {last - first:+.3f} = {(last - first) / se:.1f} standard errors; "
        f"CLIP reward {clip_first:.3f} -> {clip_last:.3f} ({(clip_last - clip_first) / clip_se:+.1f} "
        f"standard errors); {parts}"
    )
    assert last - first >= 3 * se, (first, last, se, parts)
    assert clip_last > clip_first, (clip_first, clip_last, parts)


# --------------------------------------------------------------------- bad input
@pytest.mark.slow
def test_empty_train_split_is_a_clear_error(tmp_path, tiny_models, inputs):
    params = params_for(tmp_path, tiny_models)
    empty = TrainingInputs(
        train=[], test=inputs.test, frames=inputs.frames, profiles=inputs.profiles
    )
    model, processor = load_vlm(tiny_models["vlm"])
    with pytest.raises(EmptyTrainingSet, match="train split has 0 samples"):
        train_sft(params.sft, params.models, empty, model=model, processor=processor)
    with pytest.raises(EmptyTrainingSet, match="train split is empty"):
        run_grpo(params, empty, model=model, processor=processor)


def test_samples_without_a_trace_are_not_sft_material(tmp_path, tiny_models, inputs):
    params = params_for(tmp_path, tiny_models)
    bare = [s.model_copy(update={"process": None}) for s in inputs.train]
    no_trace = TrainingInputs(train=bare, test=[], frames=inputs.frames, profiles=inputs.profiles)
    model, processor = load_vlm(tiny_models["vlm"])
    with pytest.raises(EmptyTrainingSet, match="none carries a reference"):
        train_sft(params.sft, params.models, no_trace, model=model, processor=processor)


def test_a_sample_whose_clip_has_no_frames_fails_before_training(tmp_path, tiny_models, inputs):
    params = params_for(tmp_path, tiny_models)
    orphan = inputs.train[0].model_copy(update={"clip_id": "deadbeefdeadbeef"})
    broken = TrainingInputs(
        train=[orphan, *inputs.train[1:]], test=[], frames=inputs.frames, profiles=inputs.profiles
    )
    model, processor = load_vlm(tiny_models["vlm"])
    with pytest.raises(MissingClipError, match="deadbeefdeadbeef"):
        train_sft(params.sft, params.models, broken, model=model, processor=processor)
    with pytest.raises(MissingClipError, match="deadbeefdeadbeef"):
        run_grpo(params, broken, model=model, processor=processor)
    assert not (tmp_path / "sft" / "checkpoints").exists()  # no work was started


def test_pcg_scores_with_the_trainers_reference_model(tmp_path, tiny_models, inputs):
    from datasets import Dataset

    from ebmrl.prompts.conversation import grpo_row
    from ebmrl.train.grpo import reference_model
    from ebmrl.train.trl_args import grpo_args
    from ebmrl.train.video_grpo import VideoGRPOTrainer

    def build(beta: float):
        params = params_for(tmp_path, tiny_models, grpo={"beta": beta})
        model, processor = load_vlm(tiny_models["vlm"])
        rows = [grpo_row(s, inputs.profiles) for s in inputs.train[:2]]
        trainer = VideoGRPOTrainer(
            model=model,
            reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
            args=grpo_args(params.grpo, params.models, tmp_path / "out", [], {}),
            train_dataset=Dataset.from_list(rows),
            processing_class=processor,
            frame_store=inputs.frames,
        )
        return trainer, reference_model(trainer, str(tiny_models["vlm"]), params.models)

    trainer, ref = build(beta=0.04)
    assert ref is trainer.ref_model  # shared, not a third copy
    trainer, ref = build(beta=0.0)
    assert trainer.ref_model is None and ref is not trainer.model  # a frozen copy of the SFT model
    assert not any(p.requires_grad for p in ref.parameters())


def test_nonfinite_rewards_become_none_and_are_counted():
    def flaky(prompts, completions, log_metric=None, **kwargs):
        return [1.0, math.nan, math.inf, None]

    guarded = nonfinite_guard(flaky)
    logged = {}
    values = guarded([], ["a", "b", "c", "d"], log_metric=lambda k, v: logged.__setitem__(k, v))
    assert values == [1.0, None, None, None]
    assert guarded.__name__ == "flaky"
    assert logged == {"rewards/flaky/nonfinite_rate": 0.5}


def test_reward_summary_windows():
    history = [{"reward": float(i), "rewards/format/mean": 1.0} for i in range(8)]
    summary = reward_summary(history, ["format"])
    assert summary["reward_first"] == 0.5 and summary["reward_last"] == 6.5
    assert summary["format_first"] == summary["format_last"] == 1.0
    assert window_means([], 3) == (None, None)


# ------------------------------------------------------- the stage: CLI, MLflow, resume
def write_params(
    path: Path, tmp_path: Path, tiny_models, dataset, frames, init_model, **grpo
) -> Path:
    data = {
        "models": {"vlm": str(tiny_models["vlm"]), "clip": str(tiny_models["clip"]),
                   "text_encoder": str(tiny_models["text_encoder"]), "text_encoder_layers": 2},
        "rewards": {"pcg": {"leak_filter": {"model": str(tiny_models["text_encoder"])}}},
        "grpo": {**GRPO_SETTINGS, "out": str(tmp_path / "grpo"), "init_model": str(init_model),
                 "dataset": str(dataset), "frames": str(frames), **grpo},
        "tracking": {"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "ebmrl-test"},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stage_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.slow
def test_grpo_stage_tracks_every_reward_and_the_completions_table(
    tmp_path, tiny_models, dataset, frames_dir, sft_result
):
    import mlflow

    params = write_params(
        tmp_path / "params.yaml", tmp_path, tiny_models, dataset, frames_dir,
        sft_result.final_dir, max_steps=4, completions_every=2, gradient_accumulation_steps=1,
    )  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("ebmrl-test")
    with mlflow.start_run(run_name="pipeline") as parent:
        parent_id = parent.info.run_id
    env = {**stage_env(tmp_path), "EBMRL_PARENT_RUN_ID": parent_id}
    metrics = tmp_path / "grpo.json"
    run = subprocess.run(
        [str(BIN / "ebmrl"), "--params", str(params), "grpo", "--metrics", str(metrics),
         "--log-history", str(tmp_path / "log.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("ebmrl-test").experiment_id],
        filter_string="tags.`ebmrl.stage` = 'grpo'",
    )
    assert len(runs) == 1
    stage = runs[0]
    assert stage.data.tags["mlflow.parentRunId"] == parent_id
    assert stage.data.tags["ebmrl.git_commit"]
    assert stage.data.params["grpo.beta"] == "0.04"
    for name in REWARDS:
        series = client.get_metric_history(stage.info.run_id, f"rewards/{name}/mean")
        assert sorted(m.step for m in series) == [1, 2, 3, 4], name
    for key in ("reward", "kl", "completions/mean_length", "rewards/pcg/baseline_queries"):
        assert client.get_metric_history(stage.info.run_id, key), key
    # Where each step's time went (seconds): in MLflow, never in the DVC outputs.
    timings = ["step_time", "timing/generation", "timing/reference_pass", "timing/rewards"]
    timings += [f"timing/rewards/{name}" for name in REWARDS]
    history = {
        key: {m.step: m.value for m in client.get_metric_history(stage.info.run_id, key)}
        for key in [*timings, "timing/policy_forward_backward"]
    }
    for key, series in history.items():
        assert sorted(series) == [1, 2, 3, 4] and min(series.values()) > 0, (key, series)
    for step, total in history["step_time"].items():
        split = history["timing/generation"][step] + history["timing/policy_forward_backward"][step]
        assert split < total * 1.05, (step, split, total)  # parts of TRL's step, not more
    assert "timing/" not in (tmp_path / "log.json").read_text()
    artifacts = [a.path for a in client.list_artifacts(stage.info.run_id, "completions")]
    assert artifacts == ["completions/step_000002.json", "completions/step_000004.json"]
    table = mlflow.load_table("completions/step_000004.json", run_ids=[stage.info.run_id])
    assert {"prompt_id", "perception", "think", "answer", "reward/pcg", "reward/clip"} <= set(
        table.columns
    )
    assert len(table) == 8
    assert "summary/reward_last" in stage.data.metrics
    assert stage.data.tags["ebmrl.model_path"].endswith("grpo/final")


@pytest.mark.slow
def test_grpo_resumes_after_kill_9_and_ends_at_the_configured_step(
    tmp_path, tiny_models, dataset, frames_dir, sft_result
):
    params = write_params(
        tmp_path / "params.yaml", tmp_path, tiny_models, dataset, frames_dir,
        sft_result.final_dir, max_steps=6, save_steps=2, gradient_accumulation_steps=1,
    )  # fmt: skip
    command = [str(BIN / "ebmrl"), "--params", str(params), "grpo", "--no-tracking",
               "--metrics", str(tmp_path / "grpo.json"), "--log-history", str(tmp_path / "log.json")]  # fmt: skip
    checkpoints = tmp_path / "grpo" / "checkpoints"
    # Each checkpoint is also copied to a store (a folder here; S3 in the e2e test).
    env = {**stage_env(tmp_path), "EBMRL_CHECKPOINTS_URI": str(tmp_path / "store")}
    victim = subprocess.Popen(command, cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not (checkpoints / "checkpoint-2" / "trainer_state.json").is_file():
            assert victim.poll() is None, "the stage ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.5)
        time.sleep(1.0)  # let the checkpoint finish writing; kill mid-step 3 or 4
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert not (tmp_path / "grpo" / "final").exists()
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming GRPO from" in rerun.stdout
    resumed_from = int(
        rerun.stdout.split("resuming GRPO from")[1].split("checkpoint-")[1].split()[0]
    )
    assert resumed_from >= 2
    from ebmrl.train.checkpoint_sync import CheckpointStore

    (run_dir,) = (tmp_path / "store" / "grpo").iterdir()  # one run fingerprint
    store = CheckpointStore(str(run_dir))
    assert store.newest_step() == 6
    # The trainer of the rerun started from the checkpoint's state, not from step 0.
    assert store.record(6)["started_at_step"] == resumed_from
    log = yaml.safe_load((tmp_path / "log.json").read_text())
    # Only the steps after the checkpoint were trained again, and the run ends at max_steps.
    assert [entry["step"] for entry in log][-1] == 6
    assert (checkpoints / "checkpoint-6").is_dir()
    assert (tmp_path / "grpo" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_grpo_runs_under_accelerate_with_two_cpu_processes(
    tmp_path, tiny_models, dataset, frames_dir, sft_result
):
    params = write_params(
        tmp_path / "params.yaml", tmp_path, tiny_models, dataset, frames_dir,
        sft_result.final_dir, max_steps=2, gradient_accumulation_steps=1,
    )  # fmt: skip
    command = [
        str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port", str(free_port()), "-m", "ebmrl.cli", "--params", str(params), "grpo", "--no-tracking",
        "--metrics", str(tmp_path / "grpo.json"), "--log-history", str(tmp_path / "log.json"),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, env=stage_env(tmp_path), capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = yaml.safe_load((tmp_path / "grpo.json").read_text())
    assert metrics["steps"] == 2
    assert (tmp_path / "grpo" / "final" / "model.safetensors").is_file()


def test_checkpoints_of_another_run_are_never_resumed(tmp_path):
    from ebmrl.train.trl_args import checkpoint_to_resume, run_fingerprint

    folder = tmp_path / "checkpoints"
    first = run_fingerprint(lr=1e-4, rows=["a"])
    assert checkpoint_to_resume(folder, first, True) is None
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert checkpoint_to_resume(folder, first, True).endswith("checkpoint-2")  # same run: resume
    other = run_fingerprint(lr=5e-4, rows=["a"])
    assert checkpoint_to_resume(folder, other, True) is None  # other params: start afresh
    assert not (folder / "checkpoint-2").exists()
    assert checkpoint_to_resume(folder, first, True) is None  # the first run's marker is gone


# ------------------------------------------------------------------------ resume
@pytest.mark.slow
def test_resume_loads_every_weight_of_the_checkpoint(tmp_path, tiny_models, sft_result):
    """transformers 5.24's Trainer resumes Qwen2.5-VL with none of the checkpoint's weights
    (saved key names differ from module names); our trainers load them all."""
    import torch
    from transformers import Trainer, TrainingArguments

    from ebmrl.train.resume import ResumeWithConvertedKeys

    class Resuming(ResumeWithConvertedKeys, Trainer):
        pass

    checkpoint = str(sft_result.final_dir)  # a save_pretrained folder, like checkpoint-N
    expected, _ = load_vlm(checkpoint)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])

    def weights_after_resume(trainer_class):
        model, _ = load_vlm(tiny_models["vlm"])  # the start model
        trainer_class(model=model, args=args)._load_from_checkpoint(checkpoint)
        return model.state_dict()

    wanted = expected.state_dict()
    ours = weights_after_resume(Resuming)
    assert ours.keys() == wanted.keys()
    assert all(torch.equal(ours[k], wanted[k]) for k in wanted)
    # The reason for the mixin: the stock resume leaves the start model's weights. When a
    # transformers upgrade fixes this, this line fails and the mixin can go.
    stock = weights_after_resume(Trainer)
    assert not torch.equal(stock["lm_head.weight"], wanted["lm_head.weight"])


def test_a_code_change_makes_a_new_run_but_an_unrelated_one_does_not(tmp_path):
    from ebmrl.train.trl_args import training_code_identity

    (tmp_path / "train").mkdir()
    (tmp_path / "eval").mkdir()
    (tmp_path / "train" / "loop.py").write_text("lr = 1\n")
    (tmp_path / "eval" / "report.py").write_text("x = 1\n")
    before = training_code_identity(tmp_path)
    (tmp_path / "eval" / "report.py").write_text("x = 2\n")
    assert training_code_identity(tmp_path) == before
    (tmp_path / "train" / "loop.py").write_text("lr = 2\n")
    assert training_code_identity(tmp_path) != before
    assert training_code_identity() == training_code_identity()  # the real package


def test_timings_stay_out_of_the_state_that_checkpoints_save():
    """TRL logs ``step_time`` (MLflow keeps it); the checkpoints' trainer_state.json, which
    DVC hashes, must not: the same run gives the same bytes."""
    from types import SimpleNamespace

    from ebmrl.train.grpo import timings_out_of_the_state

    state = SimpleNamespace(log_history=[{"reward": 1.0, "step_time": 0.7, "step": 1}])
    logs = {"reward": 1.0, "step_time": 0.7}
    timings_out_of_the_state().on_log(None, state, None, logs=logs)
    assert state.log_history == [{"reward": 1.0, "step": 1}]
    assert logs["step_time"] == 0.7  # what the loggers were given is left alone
