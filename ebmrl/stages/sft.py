"""``ebmrl sft``: CoT-SFT cold start on video (params: ``sft``, ``models``, ``tracking``,
``checkpoints``).

Trains on the train split's samples that carry a reference perception + think, loss on
the assistant turn only; checkpoints every ``sft.save_steps`` into
``<sft.out>/checkpoints`` (no DVC output: the stage stays run-cacheable), copied to
``checkpoints.uri`` when set, and resumes from the newest one of the same run (local or
synced) when rerun after a crash; writes ``<sft.out>/final`` (loadable with
``from_pretrained``) and ``sft.metrics`` (``metrics/sft.json``: format reward of greedy
generations on held-out samples, before and after training). The inputs are checked
before the model is loaded and before the MLflow run opens; timings go to MLflow and
the log, not into the metrics file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ebmrl.config import Params

HELP = "CoT-SFT: teach the <perception><think><answer> format on video samples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--metrics", help="metrics file (default: sft.metrics)")


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.edge import tracking
    from ebmrl.io import write_json
    from ebmrl.stages.inputs import prepare_training_stage
    from ebmrl.train.checkpoint_sync import checkpoints_uri
    from ebmrl.train.sft import sft_rows, train_sft

    if not args.no_tracking:
        tracking.require_mlflow()  # before any model loads

    section, models, tags = params.sft, params.models, params.tag_names()
    started = time.perf_counter()
    is_main, inputs, model, processor = prepare_training_stage(
        section,
        models,
        models.vlm,
        lambda inputs: sft_rows(inputs, section.eval_samples, tags, section.target_layout),
    )
    tracked = not args.no_tracking and is_main
    logged = {"sft": section.model_dump(), "models": models.model_dump()}
    with tracking.stage_run("sft", params.tracking, logged, enabled=tracked) as mlflow:
        result = train_sft(
            section,
            models,
            inputs,
            model=model,
            processor=processor,
            report_to=["mlflow"] if tracked else [],
            is_main_process=is_main,
            checkpoints_uri=checkpoints_uri(params.checkpoints.uri),
            tags=tags,
        )
        if mlflow is not None:
            numbers = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
            mlflow.log_metrics({f"heldout/{k}": v for k, v in numbers.items()})
            mlflow.log_metric("stage_seconds", time.perf_counter() - started)
            mlflow.log_text(
                json.dumps(result.held_out_generations, indent=2), "heldout_generations.json"
            )
            mlflow.set_tag("ebmrl.model_path", str(result.final_dir.resolve()))
    if is_main:
        write_json(args.metrics or section.metrics, result.metrics)
        print(json.dumps(result.metrics, indent=2))
        print(f"SFT model: {Path(result.final_dir)} ({time.perf_counter() - started:.1f}s)")
    return 0
