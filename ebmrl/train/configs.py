"""TRL/PEFT configuration objects built from our validated params sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ebmrl.config import GrpoSection, LoraSection, ModelsSection, SftSection, TrainingSection


def lora_config(section: LoraSection):
    """A peft ``LoraConfig`` when LoRA is enabled, else None (full fine-tuning)."""
    if not section.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=list(section.target_modules),
        task_type="CAUSAL_LM",
    )


def on_cpu(models: ModelsSection) -> bool:
    return models.device == "cpu"


def common_args(
    section: TrainingSection, models: ModelsSection, output_dir: str | Path, report_to: list[str]
) -> dict[str, Any]:
    cpu = on_cpu(models)
    return {
        "output_dir": str(output_dir),
        "learning_rate": section.learning_rate,
        "lr_scheduler_type": section.lr_scheduler,
        # A float in [0, 1) is a fraction of the total steps (transformers 5).
        "warmup_steps": section.warmup_ratio,
        "weight_decay": section.weight_decay,
        "per_device_train_batch_size": section.per_device_batch_size,
        "gradient_accumulation_steps": section.gradient_accumulation_steps,
        "num_train_epochs": section.epochs,
        "max_steps": section.max_steps,
        "seed": section.seed,
        "logging_steps": section.logging_steps,
        "save_strategy": "steps",
        "save_steps": section.save_steps,
        "save_total_limit": section.save_total_limit,
        "report_to": report_to,
        "use_cpu": cpu,
        # bf16 autocast on CPU is 20-30x slower than float32 (stack.md).
        "bf16": models.dtype == "bfloat16" and not cpu,
        "fp16": models.dtype == "float16" and not cpu,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
    }


def sft_args(
    section: SftSection, models: ModelsSection, output_dir: str | Path, report_to: list[str]
):
    from trl import SFTConfig

    return SFTConfig(
        **common_args(section, models, output_dir, report_to),
        max_length=None,  # our collator refuses over-long batches instead of truncating
        dataset_kwargs={"skip_prepare_dataset": True},
    )


def grpo_args(
    section: GrpoSection,
    models: ModelsSection,
    output_dir: str | Path,
    report_to: list[str],
    reward_args: dict[str, Any],
):
    """``reward_args``: ``reward_weights``/``multi_objective_aggregation``/... from the rewards."""
    from trl import GRPOConfig

    return GRPOConfig(
        **common_args(section, models, output_dir, report_to),
        num_generations=section.group_size,
        temperature=section.temperature,
        top_p=section.top_p,
        beta=section.beta,
        max_completion_length=section.max_completion_length,
        mask_truncated_completions=section.mask_truncated_completions,
        use_vllm=section.use_vllm,
        log_completions=False,  # our MLflow completions table replaces the console dump
        **reward_args,
    )


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder, to resume a stage killed mid-run."""
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(output_dir)
    return get_last_checkpoint(str(path)) if path.is_dir() else None
