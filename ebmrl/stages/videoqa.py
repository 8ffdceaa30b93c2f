"""``ebmrl videoqa``: zero-shot VideoQA of each system on the configured benchmarks
(params: ``videoqa``; ``models.vlm``/``dtype``/``device``/``attn_implementation`` for
local systems; ``tracking`` for MLflow).

Writes ``<videoqa.metrics>/<benchmark>.json`` (accuracy per system, per question type,
by our lenient parser and, under ``authors``, by the authors' exact match, whichever
``videoqa.protocol`` asked with; ``dvc metrics`` reads them) and
``<videoqa.out>/predictions.jsonl`` (every question, every system: the raw output, the
parsed answer, correct or not by both readings, or why it was not scored).
Answers are cached under ``videoqa.cache``. Unreadable videos and unparseable answers
are counted, never guessed; the stage finishes. Requests to the systems follow
``videoqa.system_requests`` (concurrency, retries, timeout).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ebmrl.config import Params

HELP = "zero-shot VideoQA (ActivityNet-QA yes/no, NExT-QA, PororoQA) with the EBM-RL prompt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.backends import (
        GenerationClient,
        ResponseCache,
        concurrency,
        retry_policy,
        system_backend,
    )
    from ebmrl.data.jsonl import write_jsonl
    from ebmrl.edge import tracking
    from ebmrl.eval.videoqa import load_benchmark, nextqa_group
    from ebmrl.eval.videoqa.scoring import (
        FrameReader,
        answer_questions,
        summarize,
        vlm_answerer,
    )
    from ebmrl.io import write_json

    if not args.no_tracking:
        tracking.require_mlflow()  # before any model loads

    section, models = params.videoqa, params.models
    started = time.perf_counter()
    if section.torch_threads:
        import torch

        torch.set_num_threads(section.torch_threads)
    benchmarks = [
        (
            spec,
            load_benchmark(
                spec.format,
                spec.annotations,
                spec.videos,
                answers=spec.answers,
                video_map=spec.video_map,
                name=spec.name,
                max_questions=spec.max_questions,
                seed=section.subset_seed,
            ),
        )
        for spec in section.benchmarks
    ]
    reader = FrameReader(section.frames, section.max_pixels_per_frame)
    cache = ResponseCache(Path(section.cache) / "responses.jsonl")
    summaries: dict[str, dict] = {spec.name: {} for spec, _ in benchmarks}
    predictions: list[dict] = []
    logged = {"videoqa": section.model_dump(), "models": models.model_dump()}
    with tracking.stage_run(
        "videoqa", params.tracking, logged, enabled=not args.no_tracking
    ) as mlflow:
        try:
            requests = section.system_requests
            for system in section.systems:
                backend = system_backend(system, models, requests, section.torch_threads)
                client = GenerationClient(backend, cache, retry_policy(requests))
                answerer = vlm_answerer(
                    client, section.max_new_tokens, params.tag_names(), section.protocol
                )
                try:
                    for spec, items in benchmarks:
                        results = answer_questions(
                            items,
                            system.name,
                            answerer,
                            reader,
                            concurrency=concurrency(requests, backend),
                            progress=True,
                            tags=params.tag_names(),
                            protocol=section.protocol,
                            max_pixels=section.max_pixels_per_frame,
                        )
                        group = nextqa_group if spec.format == "nextqa" else None
                        summaries[spec.name][system.name] = summarize(results, group)
                        predictions += [r.as_dict() for r in results]
                finally:
                    backend.close()
        finally:
            cache.close()
        metrics_dir = Path(section.metrics)
        for name, per_system in summaries.items():
            write_json(metrics_dir / f"{name}.json", per_system)
        write_jsonl(Path(section.out) / "predictions.jsonl", predictions)
        if mlflow is not None:
            mlflow.log_metrics(tracking.metric_values({"videoqa": summaries}))
    for name, per_system in summaries.items():
        for system, summary in per_system.items():
            print(
                f"  {name:16s} {system:8s} accuracy={summary['accuracy']:.3f} "
                f"({summary['correct']} correct of {summary['scored']} scored; "
                f"{summary['unparseable']} unparseable, {summary['not_scored']} not scored; "
                f"authors' exact match {summary['authors']['accuracy']:.3f})"
            )
    print(
        f"videoqa: {sum(len(i) for _, i in benchmarks)} question(s) x {len(section.systems)} "
        f"system(s) in {time.perf_counter() - started:.1f}s -> {json.dumps(str(section.metrics))}"
    )
    return 0
