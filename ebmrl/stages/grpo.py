"""``ebmrl grpo``: EBM-RL GRPO on video with the four rewards (params: ``grpo``,
``rewards``, ``models``, ``tracking``, ``checkpoints``).

Starts from the SFT checkpoint (``grpo.init_model``), also the frozen reference for the
KL term and the PCG reward (the PCG scorer reuses the trainer's reference model).
Checkpoints every ``grpo.save_steps`` into ``<grpo.out>/checkpoints`` (no DVC output),
copied to ``checkpoints.uri`` when set; a rerun after a crash, here or on another
machine, resumes from the newest one of the same run and stops at the configured step
count. Writes ``<grpo.out>/final``,
``grpo.metrics`` (``metrics/grpo.json``: first- vs last-window reward means, per
component) and ``grpo.log_history`` (``metrics/grpo_log.json``: every logged step, for
``dvc plots``). Timings (TRL's ``step_time``, the stage's seconds) go to MLflow and the
log, not into those files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ebmrl.config import Params

HELP = "EBM-RL GRPO: format, answer (BERTScore), CLIP and PCG rewards on video"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--metrics", help="metrics file (default: grpo.metrics)")
    parser.add_argument("--log-history", help="per-step log (default: grpo.log_history)")


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.edge import tracking
    from ebmrl.io import write_json
    from ebmrl.stages.inputs import prepare_training_stage
    from ebmrl.train.checkpoint_sync import checkpoints_uri
    from ebmrl.train.grpo import grpo_rows, train_grpo

    if not args.no_tracking:
        tracking.require_mlflow()  # before any model loads

    section, models = params.grpo, params.models
    started = time.perf_counter()
    if section.use_vllm:
        from ebmrl.edge.exit_codes import EXIT_INVALID
        from ebmrl.train.vllm_video import vllm_unavailable_reason

        reason = vllm_unavailable_reason()
        if reason:  # before any model is loaded
            print(f"error: grpo.use_vllm: {reason}", file=sys.stderr)
            return EXIT_INVALID
    is_main, inputs, model, processor = prepare_training_stage(
        section, models, section.init_model, lambda inputs: grpo_rows(inputs, params.tag_names())
    )
    tracked = not args.no_tracking and is_main
    logged = {
        "grpo": section.model_dump(),
        "rewards": params.rewards.model_dump(),
        "models": models.model_dump(),
    }
    with tracking.stage_run("grpo", params.tracking, logged, enabled=tracked) as mlflow:

        def add_completions_table(trainer):
            if mlflow is not None:
                trainer.add_callback(
                    tracking.completions_callback(trainer, section.completions_every)
                )

        result = train_grpo(
            section,
            models,
            params.rewards,
            inputs,
            model=model,
            processor=processor,
            tags=params.tag_names(),
            report_to=["mlflow"] if tracked else [],
            trainer_hook=add_completions_table,
            is_main_process=is_main,
            checkpoints_uri=checkpoints_uri(params.checkpoints.uri),
        )
        if mlflow is not None:
            numbers = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
            mlflow.log_metrics({f"summary/{k}": v for k, v in numbers.items()})
            mlflow.log_metric("stage_seconds", time.perf_counter() - started)
            mlflow.set_tag("ebmrl.model_path", str(result.final_dir.resolve()))
    if is_main:
        write_json(args.metrics or section.metrics, result.metrics)
        write_json(args.log_history or section.log_history, result.log_history)
        print(json.dumps(result.metrics, indent=2))
        print(f"GRPO model: {result.final_dir} ({time.perf_counter() - started:.1f}s)")
    return 0
