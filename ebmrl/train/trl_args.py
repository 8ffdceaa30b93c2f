"""TRL/PEFT configuration objects built from our validated params sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ebmrl.config import GrpoSection, LoraSection, ModelsSection, SftSection, TrainingSection
from ebmrl.models.identity import model_identity  # noqa: F401 (part of this module's API)


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
        "max_grad_norm": section.max_grad_norm,
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
        # transformers 5 renamed it (the old name warns); TRL's configs default it to on.
        "activation_checkpointing": section.gradient_checkpointing,
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
    """``reward_args``: ``reward_weights`` from the rewards (``RewardSetup``).

    The advantages are not TRL's: ``VideoGRPOTrainer`` computes them with ``combine``
    (``rewards.aggregation``) and clamps the KL log-ratio (``grpo.kl_clamp``).
    """
    from trl import GRPOConfig

    return GRPOConfig(
        **common_args(section, models, output_dir, report_to),
        num_generations=section.group_size,
        temperature=section.temperature,
        top_p=section.top_p,
        top_k=section.top_k,
        beta=section.beta,
        loss_type=section.loss_type,
        num_iterations=section.num_iterations,
        use_bias_correction_kl=section.kl_bias_correction,
        max_completion_length=section.max_completion_length,
        mask_truncated_completions=section.mask_truncated_completions,
        use_vllm=section.use_vllm,
        vllm_mode="colocate",  # the server client has no video channel (vllm_video.py)
        vllm_gpu_memory_utilization=section.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=section.vllm_enable_sleep_mode,
        log_completions=False,  # our MLflow completions table replaces the console dump
        **reward_args,
    )


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder, to resume a stage killed mid-run."""
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(output_dir)
    return get_last_checkpoint(str(path)) if path.is_dir() else None


FINGERPRINT = "ebmrl_run.json"


def run_fingerprint(**inputs: Any) -> str:
    """A hash of everything that defines a training run (params, data, start model)."""
    import hashlib
    import json

    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def training_code_identity(package: Path | None = None) -> str:
    """A hash of the code that shapes a training run (training, rewards, models, prompts).

    Part of the run fingerprint: after a code change DVC reruns the stage, and the rerun
    must train with the new code rather than finish the old code's checkpoint.
    """
    import hashlib

    package = package or Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for pattern in ("train/*.py", "rewards/*.py", "models/*.py", "prompts/*.txt"):
        for path in sorted(package.glob(pattern)):
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def resumable_checkpoint(output_dir: str | Path, fingerprint: str) -> str | None:
    """The checkpoint to resume, only if it belongs to this very run (read-only).

    Checkpoints survive reruns (they are no DVC output: DVC never removes them) so that a
    killed stage resumes; a rerun with other params, data or start model must not
    continue a different run.
    """
    import json

    folder = Path(output_dir)
    try:
        recorded = json.loads((folder / FINGERPRINT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return last_checkpoint(folder) if recorded.get("fingerprint") == fingerprint else None


def start_afresh(output_dir: str | Path, fingerprint: str) -> None:
    """Remove another run's checkpoints and record this run's fingerprint (main process)."""
    import json
    import shutil

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for child in folder.iterdir():
        if child.name.startswith("checkpoint-"):
            shutil.rmtree(child, ignore_errors=True)
    (folder / FINGERPRINT).write_text(
        json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8"
    )


def checkpoint_to_resume(
    output_dir: str | Path, fingerprint: str, is_main_process: bool, store: Any = None
) -> str | None:
    """Decide resume-or-restart the same way on every process, then let the main one clean up.

    ``store`` (a ``checkpoint_sync.CheckpointStore`` of this run): when it holds a newer
    checkpoint than the local folder (another machine trained further), the main process
    downloads it first, and the run resumes from it.
    """
    from accelerate import PartialState

    from ebmrl.train.checkpoint_sync import checkpoint_step

    resume = resumable_checkpoint(output_dir, fingerprint)
    PartialState().wait_for_everyone()  # every rank has decided before anything is removed
    if resume is None and is_main_process:
        start_afresh(output_dir, fingerprint)
    PartialState().wait_for_everyone()
    if store is None:
        return resume
    if is_main_process:
        newest = store.newest_step()
        if newest > checkpoint_step(resume):
            fetched = store.fetch(newest, output_dir)
            print(f"fetched {fetched.name} from {store.root}", flush=True)
    PartialState().wait_for_everyone()
    return resumable_checkpoint(output_dir, fingerprint)
