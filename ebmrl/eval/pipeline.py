"""The evaluation end to end, with every model and endpoint injected (the stage builds them).

``generate_all``: each system's outputs (cached), one model at a time.
``evaluate_outputs``: automatic metrics, the judge (listwise, optional pairwise),
summaries, and the per-sample records of the report.
``judge_backend`` builds the judge's backend, optionally behind a local HTTP server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ebmrl.backends import Backend, GenerationClient, make_backend
from ebmrl.config import JudgeSection, ModelsSection
from ebmrl.eval import auto_metrics, evaluation
from ebmrl.eval.frames import jpeg_data_url, judge_frames, shrink
from ebmrl.eval.generation import ClipFrames, generate_outputs, outputs_by_sample
from ebmrl.eval.judge import Judge, JudgeContext
from ebmrl.eval.outputs import SystemOutput
from ebmrl.frame_store import FrameStore
from ebmrl.schema import ProfileBook, Sample
from ebmrl.tags import DEFAULT_TAGS, TagNames
from ebmrl.train.prompting import prompt_id
from ebmrl.video import spread_frames


# ---------------------------------------------------------------------- backends
@contextlib.contextmanager
def judge_backend(section: JudgeSection, models: ModelsSection) -> Iterator[Backend]:
    """The judge's backend; with ``serve_local`` the local model is served by
    ``ebmrl.serve.ChatServer`` on 127.0.0.1 (any free port) and reached over HTTP, the
    path a vLLM or hosted judge takes. The server stops when the block ends."""
    backend = make_backend(section.backend, models)
    if not section.serve_local:
        try:
            yield backend
        finally:
            backend.close()
        return
    from ebmrl.backends.openai_http import OpenAIHTTPBackend
    from ebmrl.serve import ChatServer

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


# -------------------------------------------------------------------- evaluation
@dataclass
class EvaluationResult:
    systems: list[str]
    judge_metrics: list[str]
    auto: dict[str, dict[str, Any]]
    judge: dict[str, dict[str, Any]] | None
    pairwise: dict[str, Any] | None
    records: list[dict[str, Any]]
    metrics: dict[str, Any]
    plot_rows: list[dict[str, Any]]
    judge_stats: dict[str, int] = field(default_factory=dict)


def generate_all(
    samples: Sequence[Sample],
    profiles: ProfileBook | None,
    clips: ClipFrames,
    systems: Sequence[tuple[str, Callable[[], GenerationClient]]],
    *,
    max_new_tokens: int,
    concurrency: int = 4,
    progress: bool = False,
    tags: TagNames = DEFAULT_TAGS,
) -> tuple[dict[str, dict[str, SystemOutput]], dict[str, dict[str, Any]]]:
    """Each system's outputs, one system at a time: its model is loaded, used, released
    (three 7B models need not fit in memory together). At most ``concurrency`` requests
    in flight (fewer if the backend takes fewer). Returns outputs and client stats."""
    per_system: dict[str, dict[str, SystemOutput]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for name, make_client in systems:
        client = make_client()
        try:
            per_system[name] = generate_outputs(
                name,
                client,
                samples,
                clips,
                profiles,
                max_tokens=max_new_tokens,
                concurrency=min(
                    concurrency, getattr(client.backend, "max_concurrency", None) or concurrency
                ),
                progress=progress,
                tags=tags,
            )
        finally:
            client.backend.close()
        stats[name] = client.stats.as_dict()
        del client
    return per_system, stats


def evaluate_outputs(
    samples: Sequence[Sample],
    profiles: ProfileBook | None,
    store: FrameStore,
    clips: ClipFrames,
    per_system: Mapping[str, Mapping[str, SystemOutput]],
    *,
    judge: Judge | None = None,
    judge_metrics: Sequence[str] = ("veg", "spc", "cn"),
    pairs: Sequence[tuple[str, str]] = (),
    judge_frame_count: int = 8,
    judge_frame_side: int = 448,
    judge_concurrency: int = 1,
    bert: Any = None,
    clip: Any = None,
    bert_batch_size: int = 64,
    report_frames: int = 8,
    progress: bool = False,
) -> EvaluationResult:
    """Automatic metrics, the judge and the summaries of the systems' outputs."""
    systems = list(per_system)
    outputs = outputs_by_sample(per_system, samples)
    keys = [prompt_id(s) for s in samples for _ in systems]
    items = [
        auto_metrics.AutoItem(output, s.target.utterance, str(s.clip_id))
        for s in samples
        for output in outputs[prompt_id(s)]
    ]
    per_item = auto_metrics.score_outputs(
        items, bert=bert, clip=clip, frame_embeddings=store.embeddings, batch_size=bert_batch_size
    )
    auto = auto_metrics.summarize(items, per_item)
    auto_rows: dict[str, dict[str, dict]] = {}
    for key, item, row in zip(keys, items, per_item, strict=True):
        auto_rows.setdefault(key, {})[item.output.system] = row
    contexts = {}
    for s in samples:
        frames = clips.of(s)
        shown = (
            None if frames is None else judge_frames(frames, judge_frame_count, judge_frame_side)
        )
        contexts[prompt_id(s)] = JudgeContext.from_sample(s, profiles, shown)
    judgements = None
    judge_summary = pairwise = None
    if judge is not None:
        judgements = evaluation.judge_samples(
            judge,
            contexts,
            outputs,
            metrics=judge_metrics,
            pairs=pairs,
            concurrency=judge_concurrency,
            progress=progress,
        )
        judge_summary = evaluation.judge_summary(judgements, systems, judge_metrics)
        pairwise = evaluation.pairwise_summary(judgements, pairs, judge_metrics) if pairs else None
    records = []
    for s in samples:
        key = prompt_id(s)
        frames = clips.of(s)
        thumbs = [] if frames is None or not report_frames else _thumbnails(frames, report_frames)
        records.append(
            evaluation.sample_record(
                contexts[key],
                outputs[key],
                judgements[key] if judgements is not None else None,
                auto_rows.get(key, {}),
                history=[(t.speaker, t.utterance) for t in s.dialogue],
                frames=thumbs,
                clip_problem=clips.why_missing(s),
            )
        )
    stats = dict(judge.stats) if judge is not None else {}
    metrics = evaluation.metrics_file(
        samples=len(samples),
        systems=systems,
        judge=judge_summary,
        auto=auto,
        pairwise=pairwise,
    )
    return EvaluationResult(
        systems=systems,
        judge_metrics=list(judge_metrics) if judge is not None else [],
        auto=auto,
        judge=judge_summary,
        pairwise=pairwise,
        records=records,
        metrics=metrics,
        plot_rows=evaluation.plot_rows(metrics),
        judge_stats=stats,
    )


def _thumbnails(frames: np.ndarray, count: int) -> list[str]:
    return [jpeg_data_url(f) for f in shrink(spread_frames(frames, count), 160)]
