"""EBM-RL GRPO on video: rewards wired to the trainer, the reference model shared."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebmrl.config import GrpoSection, ModelsSection, RewardsSection
from ebmrl.frame_store import FrameStore, require_clips
from ebmrl.prompts.conversation import grpo_row
from ebmrl.tags import DEFAULT_TAGS, TagNames
from ebmrl.train.checkpoint_sync import CheckpointStore, sync_callback
from ebmrl.train.saving import save_final_model
from ebmrl.train.summary import reward_summary
from ebmrl.train.training_set import EmptyTrainingSet, TrainingInputs
from ebmrl.train.trl_args import (
    checkpoint_to_resume,
    grpo_args,
    lora_config,
    model_identity,
    run_fingerprint,
    training_code_identity,
)
from ebmrl.train.video_grpo import VideoGRPOTrainer


@dataclass
class GrpoResult:
    metrics: dict[str, Any]
    final_dir: Path
    log_history: list[dict[str, Any]]
    reward_names: list[str]


def nonfinite_guard(func: Any) -> Any:
    """Wrap a TRL reward function: NaN/inf become ``None`` and are counted.

    TRL leaves a ``None`` out of that reward's group mean and std (and gives a completion
    that every reward left out an advantage of 0), so a reward that fails on one
    completion does not poison its whole group. The rate is logged as
    ``rewards/<name>/nonfinite_rate``.
    """
    name = func.__name__

    def guarded(*args: Any, log_metric: Any = None, **kwargs: Any) -> list[float | None]:
        values = func(*args, log_metric=log_metric, **kwargs)
        cleaned = [v if v is not None and math.isfinite(v) else None for v in values]
        if log_metric is not None and values:
            bad = sum(
                1 for v, c in zip(values, cleaned, strict=True) if v is not None and c is None
            )
            log_metric(f"rewards/{name}/nonfinite_rate", bad / len(values))
        return cleaned

    guarded.__name__ = guarded.__qualname__ = name
    guarded.__doc__ = func.__doc__
    return guarded


def build_rewards(
    rewards: RewardsSection,
    models: ModelsSection,
    tags: TagNames,
    frame_store: FrameStore,
    processor: Any,
    *,
    shared_prefix: bool,
):
    """Reward functions (loading only the reward models whose weight is not 0) and the PCG
    scorer, whose model is bound once the trainer (and its reference model) exists.
    ``shared_prefix``: ``grpo.shared_prefix``, for the PCG scorer's forward passes."""
    from ebmrl.rewards import reward_models
    from ebmrl.rewards.registry import RewardModels
    from ebmrl.rewards.trl_adapter import build_reward_funcs

    weights = rewards.weights
    pcg = (
        reward_models.pcg_scorer(
            rewards.pcg, None, processor, frame_store, shared_prefix=shared_prefix
        )
        if weights["pcg"]
        else None
    )
    injected = RewardModels(
        clip_encoder=reward_models.clip_encoder(models) if weights["clip"] else None,
        frame_store=frame_store,
        answer_scorer=(
            reward_models.answer_scorer(models, rewards.answer) if weights["answer"] else None
        ),
        pcg_scorer=pcg,
        sentence_embedder=(
            reward_models.sentence_embedder(rewards.pcg.leak_filter, models.device)
            if weights["pcg"]
            else None
        ),
    )
    setup = build_reward_funcs(rewards, tags, injected)
    return setup, pcg


def reference_model(trainer: Any, init_model: str, models: Any) -> Any:
    """The frozen reference (the SFT checkpoint) for the PCG reward.

    The trainer's own reference model when it has one (KL beta > 0, full fine-tuning);
    otherwise a frozen copy is loaded, because with LoRA or beta = 0 the trainer keeps no
    separate copy of the SFT checkpoint.
    """
    ref = getattr(trainer, "ref_model", None)
    if ref is None:
        from ebmrl.models import load_vlm

        ref, _ = load_vlm(init_model, dtype=models.dtype, device=models.device)
        ref.requires_grad_(False)
    return trainer.accelerator.unwrap_model(ref).eval()


# Per-step timings TRL and VideoGRPOTrainer log (to MLflow: step_time, timing/...): kept
# out of the log history the stage writes as a DVC plots file and out of the
# checkpoints' trainer_state.json (DVC hashes both), which must be the same bytes for the
# same inputs.
TIMING_KEYS = ("step_time",)
TIMING_PREFIX = "timing/"


def grpo_rows(inputs: TrainingInputs, tags: Sequence[str] = DEFAULT_TAGS) -> list[dict[str, Any]]:
    """One row per training prompt (prompt and reference in ``tags``); ``EmptyTrainingSet``
    or ``MissingClipError`` when there is nothing to train on or a clip is not in the
    frame store."""
    rows = [grpo_row(s, inputs.profiles, tags) for s in inputs.train]
    if not rows:
        raise EmptyTrainingSet("the train split is empty: GRPO has no prompt to train on")
    require_clips(inputs.frames, [r["clip_id"] for r in rows])
    return rows


def without_timings(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in entry.items()
        if k not in TIMING_KEYS
        and not k.startswith(TIMING_PREFIX)
        and not k.endswith(("_runtime", "_per_second"))
    }


def timings_out_of_the_state():
    """A callback that drops the timings from each entry of the trainer's log history
    once it is logged (MLflow, called earlier, keeps them), before a checkpoint saves it."""
    from transformers import TrainerCallback

    class DropTimings(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.log_history:
                state.log_history[-1] = without_timings(state.log_history[-1])

    return DropTimings()


def train_grpo(
    section: GrpoSection,
    models: ModelsSection,
    rewards: RewardsSection,
    inputs: TrainingInputs,
    *,
    model: Any,
    processor: Any,
    tags: TagNames = DEFAULT_TAGS,
    report_to: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    trainer_hook: Any = None,
    is_main_process: bool = True,
    checkpoints_uri: str | None = None,
) -> GrpoResult:
    """Run GRPO from ``model`` (loaded from ``section.init_model``) on ``inputs.train``,
    with the rewards of ``rewards`` reading the blocks named by ``tags`` (params.yaml
    ``grpo``, ``models``, ``rewards``, ``tags``).

    ``trainer_hook(trainer)`` runs once the trainer exists (e.g. to add a callback that
    needs it). ``checkpoints_uri``: also copy each checkpoint there, and resume from the
    newest one there when it is ahead of the local folder (``checkpoint_sync``).
    """
    from datasets import Dataset

    rows = grpo_rows(inputs, tags)
    setup, pcg_scorer = build_rewards(
        rewards, models, tags, inputs.frames, processor, shared_prefix=section.shared_prefix
    )
    out = Path(section.out)
    checkpoints = out / "checkpoints"
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=[nonfinite_guard(f) for f in setup.funcs],
        args=grpo_args(section, models, checkpoints, list(report_to), setup.grpo_config_kwargs()),
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        peft_config=lora_config(section.lora),
        frame_store=inputs.frames,
        aggregation=setup.aggregation,
        kl_clamp=section.kl_clamp,
        shared_prefix=section.shared_prefix,
        callbacks=[*callbacks, timings_out_of_the_state()],
    )
    if pcg_scorer is not None:
        pcg_scorer.model = reference_model(trainer, section.init_model, models)
    if trainer_hook is not None:
        trainer_hook(trainer)
    fingerprint = run_fingerprint(
        grpo=section.model_dump(),
        tags=list(tags),
        code=training_code_identity(),
        rewards=rewards.model_dump(),
        models=models.model_dump(),
        start=model_identity(section.init_model),
        rows=[(r["prompt_id"], r["clip_id"], r["reference"]) for r in rows],
    )
    store = (
        CheckpointStore.for_run(checkpoints_uri, "grpo", fingerprint) if checkpoints_uri else None
    )
    if store is not None:
        trainer.add_callback(sync_callback(store, section.save_total_limit))
    resume = checkpoint_to_resume(checkpoints, fingerprint, is_main_process, store)
    if resume:
        print(f"resuming GRPO from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    history = list(trainer.state.log_history)
    metrics = {
        **reward_summary(history, setup.names),
        "steps": trainer.state.global_step,
        "train_prompts": len(rows),
    }
    final_dir = out / "final"
    save_final_model(trainer.model, processor, final_dir, is_main_process)
    steps = [without_timings(e) for e in history if "reward" in e]
    return GrpoResult(metrics, final_dir, steps, setup.names)
