"""``ebmrl evaluate``: judge (VEG/SPC/CN) + automatic metrics of each system on the test
split (params: ``evaluate``; ``models.vlm``/``dtype``/``device``/``attn_implementation``
for local systems and the local judge, ``models.clip``/``clip_pretrained`` for
CLIPScore, ``models.text_encoder``/``text_encoder_layers`` for BERTScore; ``tracking``
for MLflow).

Writes ``evaluate.metrics`` (``metrics/eval.json``, for ``dvc metrics``),
``evaluate.plot_data`` (rows for the per-metric bar plots) and
``<evaluate.out>/results.json`` (every sample, every score: what ``ebmrl report`` renders
as the offline page, beside the VideoQA tables, once both stages have run). Outputs
and judgements are cached under ``evaluate.cache``: a rerun regenerates and re-judges
only what changed. A sample that cannot be scored (missing clip, judge down, a judge
that answers in prose) is reported with its reason; the stage still finishes. Run
statistics (requests, cache hits, retries, seconds) go to the log and MLflow, not into
those files: the same inputs give the same bytes however much was cached.

Decoding is ``evaluate.decoding`` (greedy by default; the paper profile samples as the
authors). With ``evaluate.judge.protocol: authors`` the judge scores a seeded random
subset the authors' way and the metrics, the MLflow run and the report carry the
authors' averages beside ours, each labelled with its protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ebmrl.backends.base import Backend
from ebmrl.config import JudgeSection, ModelsSection, Params

HELP = "evaluate the systems: VEG/SPC/CN judge, BERTScore/ROUGE-L/CLIPScore/format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-samples", type=int, help="default: evaluate.max_samples")
    parser.add_argument(
        "--judge-base-url",
        "--judge-url",
        dest="judge_base_url",
        help="judge with this OpenAI-compatible endpoint (judge.backend.base_url; sets "
        "judge.backend.kind: http)",
    )
    parser.add_argument(
        "--judge-model", help="model name at --judge-base-url (judge.backend.model)"
    )
    parser.add_argument(
        "--no-judge", action="store_true", help="automatic metrics only (judge.enabled: false)"
    )
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def _judge_section(params: Params, args: argparse.Namespace):
    judge = params.evaluate.judge
    if args.judge_base_url:
        backend = judge.backend.model_copy(
            update={"kind": "http", "base_url": args.judge_base_url, "model": args.judge_model}
        )
        judge = judge.model_copy(update={"backend": backend, "serve_local": False})
    return judge


def _is_tiny(model: str | None) -> bool:
    """A model folder built by ``ebmrl tiny-models`` (it carries the tiny-model marker)."""
    return bool(model) and (Path(str(model)) / "EBMRL_TINY.json").is_file()


def _about(section, models, judge_section, judged: bool, samples) -> dict:
    """What the report's first section says: which models are tiny, how many clips are
    synthetic (their scene is known: the demo's rendered clips)."""
    systems = [s.model or models.vlm for s in section.systems if not s.base_url]
    judge_model = judge_section.backend.model or models.vlm
    tiny_judge = judged and judge_section.backend.kind == "local" and _is_tiny(judge_model)
    clips = {s.clip_id for s in samples if s.scene_attributes is not None}
    return {
        "tiny_models": sorted({m for m in [*systems, models.vlm] if _is_tiny(m)}),
        "tiny_judge": tiny_judge,
        "synthetic_clips": len(clips),
    }


@contextlib.contextmanager
def judge_backend(section: JudgeSection, models: ModelsSection) -> Iterator[Backend]:
    """The judge's backend; with ``serve_local`` the local model is served by
    ``ebmrl.edge.http_server.ChatServer`` on 127.0.0.1 (any free port) and reached over HTTP, the
    path a vLLM or hosted judge takes. The server stops when the block ends."""
    from ebmrl.backends import make_backend

    backend = make_backend(section.backend, models)
    if not section.serve_local:
        try:
            yield backend
        finally:
            backend.close()
        return
    from ebmrl.backends.openai_http import OpenAIHTTPBackend
    from ebmrl.edge.http_server import ChatServer

    server = ChatServer(
        backend, model_name=backend.model_id, max_tokens_limit=max(4096, section.max_tokens)
    ).start()
    http = OpenAIHTTPBackend(
        server.url,
        backend.model_id,  # the served model's fingerprint: part of every cache key
        api_key_env=None,
        timeout_s=section.backend.timeout_s,
        image_format=section.backend.image_format,
        max_concurrency=1,
    )
    try:
        yield http
    finally:
        http.close()
        server.stop()
        backend.close()


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.backends import (
        GenerationClient,
        ResponseCache,
        concurrency,
        retry_policy,
        system_backend,
    )
    from ebmrl.data.dataset import load_dataset_profiles, load_split
    from ebmrl.edge import tracking
    from ebmrl.eval import pipeline
    from ebmrl.eval.generation import load_clip_frames
    from ebmrl.eval.judge import Judge
    from ebmrl.frame_store import ShardedFrameStore
    from ebmrl.io import write_json

    if not args.no_tracking:
        tracking.require_mlflow()  # before any model loads

    section, models = params.evaluate, params.models
    started = time.perf_counter()
    if section.torch_threads:
        import torch

        torch.set_num_threads(section.torch_threads)
    samples = load_split(section.dataset, section.split)
    profiles = load_dataset_profiles(section.dataset)
    store = ShardedFrameStore.open(section.frames)
    limit = args.max_samples or section.max_samples
    samples = samples[:limit] if limit else samples
    if not samples:
        print(
            f"error: no samples in the {section.split} split of {section.dataset}", file=sys.stderr
        )
        return 2
    judge_section = _judge_section(params, args)
    judged = judge_section.enabled and not args.no_judge
    cache_dir = Path(section.cache)
    outputs_cache = ResponseCache(cache_dir / "outputs.jsonl")
    judgement_cache = ResponseCache(cache_dir / "judgements.jsonl")
    clips = load_clip_frames(samples, store)

    requests = section.system_requests

    def client_for(system):
        def make() -> GenerationClient:
            backend = system_backend(system, models, requests, section.torch_threads)
            return GenerationClient(backend, outputs_cache, retry_policy(requests))

        return make

    logged = {"evaluate": section.model_dump(), "models": models.model_dump()}
    with tracking.stage_run(
        "evaluate", params.tracking, logged, enabled=not args.no_tracking
    ) as mlflow:
        try:
            per_system, generation_stats = pipeline.generate_all(
                samples,
                profiles,
                clips,
                [(s, client_for(s)) for s in section.systems],
                max_new_tokens=section.max_new_tokens,
                decoding=section.decoding,
                concurrency=requests.concurrency,
                progress=True,
                tags=params.tag_names(),
            )
            bert = clip = None
            if section.automatic.bertscore:
                from ebmrl.rewards.answer import make_bert_scorer

                bert = make_bert_scorer(
                    models.text_encoder, models.text_encoder_layers, device=models.device
                )
            if section.automatic.clipscore:
                from ebmrl.rewards.clip import OpenClipEncoder

                clip = OpenClipEncoder.load(
                    models.clip, pretrained=models.clip_pretrained, device=models.device
                )
            pairwise = judge_section.pairwise
            pairs = [tuple(p) for p in pairwise.pairs] if judged and pairwise.enabled else []
            kwargs = dict(
                judge_metrics=judge_section.metrics,
                pairs=pairs,
                judge_subset=judge_section.subset_size(),
                subset_seed=judge_section.subset_seed,
                judge_frame_source=judge_section.frame_source,
                judge_frame_count=judge_section.frames,
                judge_frame_side=judge_section.frame_max_side,
                bert=bert,
                clip=clip,
                bert_batch_size=section.automatic.batch_size,
                progress=True,
            )
            if judged:
                with judge_backend(judge_section, models) as backend:
                    client = GenerationClient(backend, None, retry_policy(judge_section.backend))
                    judge = Judge(
                        client,
                        judgement_cache,
                        max_attempts=judge_section.max_attempts,
                        max_tokens=judge_section.max_tokens,
                        seed=judge_section.seed,
                        protocol=judge_section.protocol,
                    )
                    result = pipeline.evaluate_outputs(
                        samples,
                        profiles,
                        store,
                        clips,
                        per_system,
                        judge=judge,
                        judge_concurrency=concurrency(judge_section.backend, backend),
                        **kwargs,
                    )
                    judge_info = {
                        "judge": judge.model_id,
                        "rubric": judge.version,
                        "judge protocol": judge_section.protocol,
                        "judged samples": len(result.judged),
                    }
            else:
                result = pipeline.evaluate_outputs(
                    samples, profiles, store, clips, per_system, **kwargs
                )
                judge_info = {"judge": "off"}
        finally:
            outputs_cache.close()
            judgement_cache.close()
            store.close()
        decoding = section.decoding
        results = {
            "title": "EBM-RL evaluation",
            "about": _about(section, models, judge_section, judged, samples),
            "info": {
                "split": section.split,
                "samples": len(samples),
                "decoding": (
                    "greedy"
                    if decoding.temperature == 0
                    else f"sampled (temperature {decoding.temperature:g}, top-p "
                    f"{decoding.top_p:g}, seed {decoding.seed})"
                ),
                **judge_info,
            },
            "systems": result.systems,
            "system_settings": {
                s.name: {"prompt": s.prompt, "frames": s.frames} for s in section.systems
            },
            "judge_protocol": result.judge_protocol,
            "judged": result.judged,
            "judge_metrics": result.judge_metrics,
            "judge": result.judge,
            "auto": result.auto,
            "pairwise": result.pairwise,
            "plot_rows": result.plot_rows,
            "samples": result.records,
        }
        out = Path(section.out)
        run_stats = {
            "generation": generation_stats,
            "judge": result.judge_stats,
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_json(out / "results.json", results)
        write_json(section.metrics, result.metrics)
        write_json(section.plot_data, result.plot_rows)
        if mlflow is not None:
            mlflow.log_metrics(tracking.metric_values(result.metrics))
            mlflow.log_metrics(tracking.metric_values({"run": run_stats}))
            if result.judge_protocol:
                # ".../judge/<metric>" is ours; ".../judge/authors/<metric>" the authors'.
                mlflow.set_tag("ebmrl.judge_protocol", result.judge_protocol)
            mlflow.log_artifact(str(out / "results.json"))
    print(f"evaluate run: {json.dumps(run_stats)}")
    _print_summary(result, out, time.perf_counter() - started)
    return 0


def _print_summary(result, out: Path, seconds: float) -> None:
    for system in result.systems:
        auto = result.auto.get(system, {})
        line = f"  {system:8s} bertscore={auto.get('bertscore_f1')} rouge_l={auto.get('rouge_l')}"
        line += f" format_rate={auto.get('format_ok')} clip_reward={auto.get('clip_reward')}"
        if auto.get("perception_accuracy") is not None:
            line += (
                f" perception_accuracy={auto['perception_accuracy']}"
                f" hallucinated={auto['perception_hallucinated']}"
            )
        if result.judge is not None:
            entry = result.judge[system]
            for metric in result.judge_metrics:
                line += f" {metric}={entry.get(metric)} ({entry.get(f'{metric}_scored')} scored)"
            authors = entry.get("authors")
            if authors:
                shown = " ".join(f"{m}={authors.get(m)}" for m in result.judge_metrics)
                line += f" [authors' protocol: {shown}]"
            if entry.get("not_scored_reasons"):
                line += f" not scored: {entry['not_scored_reasons']}"
        print(line)
    print(f"evaluate: {len(result.records)} sample(s) in {seconds:.1f}s -> {out / 'results.json'}")
