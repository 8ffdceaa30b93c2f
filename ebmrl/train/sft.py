"""CoT-SFT on video: train, save a ``from_pretrained``-loadable model, report format gains."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebmrl.config import ModelsSection, SftSection
from ebmrl.frame_store import require_clips
from ebmrl.prompts.conversation import TargetLayout, sft_row
from ebmrl.tags import DEFAULT_TAGS
from ebmrl.train.checkpoint_sync import CheckpointStore, sync_callback
from ebmrl.train.format_check import greedy_format_scores
from ebmrl.train.saving import save_final_model
from ebmrl.train.training_set import EmptyTrainingSet, TrainingInputs
from ebmrl.train.trl_args import (
    checkpoint_to_resume,
    lora_config,
    model_identity,
    run_fingerprint,
    sft_args,
    training_code_identity,
)
from ebmrl.train.video_sft import VideoSFTCollator

__all__ = ["EmptyTrainingSet", "SftResult", "sft_rows", "train_sft"]


@dataclass
class SftResult:
    metrics: dict[str, Any]
    final_dir: Path
    held_out_generations: list[str]


def mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def last_logged(history: Sequence[dict[str, Any]], key: str) -> Any:
    for entry in reversed(history):
        if key in entry:
            return entry[key]
    return None


def sft_rows(
    inputs: TrainingInputs,
    eval_samples: int,
    tags: Sequence[str] = DEFAULT_TAGS,
    layout: TargetLayout = "tagged",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training rows and held-out rows (targets in ``tags``, ``layout``: ``sft.target_layout``);
    ``EmptyTrainingSet`` or ``MissingClipError`` when there is nothing to learn from or a
    clip is not in the frame store."""

    def rows(samples: Sequence[Any]) -> list[dict[str, Any]]:
        made = (sft_row(s, inputs.profiles, tags, layout) for s in samples)
        return [r for r in made if r is not None]

    train_rows = rows(inputs.train)
    if not train_rows:
        raise EmptyTrainingSet(
            f"the train split has {len(inputs.train)} samples and none carries a reference "
            "perception + think trace: SFT has nothing to learn from (check synthesize)"
        )
    held_out = rows(inputs.test)[:eval_samples]
    require_clips(inputs.frames, [r["clip_id"] for r in train_rows + held_out])
    return train_rows, held_out


def train_sft(
    section: SftSection,
    models: ModelsSection,
    inputs: TrainingInputs,
    *,
    model: Any,
    processor: Any,
    report_to: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    is_main_process: bool = True,
    tags: Sequence[str] = DEFAULT_TAGS,
    checkpoints_uri: str | None = None,
) -> SftResult:
    """Train ``model`` on ``inputs.train``; checkpoints under ``<out>/checkpoints`` (resumed
    if present), final model in ``<out>/final``. ``tags``: params.yaml ``tags``.
    ``checkpoints_uri``: also copy each checkpoint there, and resume from the newest one
    there when it is ahead of the local folder (``checkpoint_sync``)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from ebmrl.train.resume import ResumeWithConvertedKeys
    from ebmrl.train.trl_contract import check_overrides

    class VideoSFTTrainer(ResumeWithConvertedKeys, SFTTrainer):
        pass

    check_overrides(VideoSFTTrainer, SFTTrainer)

    train_rows, held_out = sft_rows(inputs, section.eval_samples, tags, section.target_layout)
    out = Path(section.out)
    checkpoints = out / "checkpoints"
    before, _ = greedy_format_scores(
        model,
        processor,
        held_out,
        inputs.frames,
        max_new_tokens=section.eval_max_new_tokens,
        tags=tags,
    )
    trainer = VideoSFTTrainer(
        model=model,
        args=sft_args(section, models, checkpoints, list(report_to)),
        train_dataset=Dataset.from_list(train_rows),
        processing_class=processor,
        data_collator=VideoSFTCollator(processor, inputs.frames, max_length=section.max_length),
        peft_config=lora_config(section.lora),
        callbacks=list(callbacks),
    )
    fingerprint = run_fingerprint(
        sft=section.model_dump(),
        tags=list(tags),
        code=training_code_identity(),
        models=models.model_dump(),
        start=model_identity(models.vlm),
        rows=[(r["prompt_id"], r["clip_id"], r["completion"]) for r in train_rows],
    )
    store = (
        CheckpointStore.for_run(checkpoints_uri, "sft", fingerprint) if checkpoints_uri else None
    )
    if store is not None:
        trainer.add_callback(sync_callback(store, section.save_total_limit))
    resume = checkpoint_to_resume(checkpoints, fingerprint, is_main_process, store)
    if resume:
        print(f"resuming SFT from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    final_dir = out / "final"
    trained = save_final_model(trainer.model, processor, final_dir, is_main_process)
    after, generations = greedy_format_scores(
        trained,
        processor,
        held_out,
        inputs.frames,
        max_new_tokens=section.eval_max_new_tokens,
        tags=tags,
    )
    # No timing here: the metrics are a DVC metrics file (same input, same bytes); the
    # trainer logs runtimes to MLflow and the stage prints them.
    metrics = {
        "train_samples": len(train_rows),
        "held_out_samples": len(held_out),
        "steps": trainer.state.global_step,
        "format_before": mean(before),
        "format_after": mean(after),
        "train_loss": last_logged(trainer.state.log_history, "train_loss"),
    }
    return SftResult(metrics=metrics, final_dir=final_dir, held_out_generations=generations)
