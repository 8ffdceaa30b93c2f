"""The evaluation end to end, with every model and endpoint injected (the stage builds them).

``generate_all``: each system's outputs (cached), one model at a time.
``evaluate_outputs``: automatic metrics over every sample, the judge (listwise, optional
pairwise) over the judged subset, summaries, and the per-sample records of the report.
``judge_contexts`` gives the judge each sample with its frames (from the raw clip, or
the stored policy frames).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ebmrl.backends import GenerationClient
from ebmrl.config import DecodingSection, EvalSystemSection
from ebmrl.eval import auto_metrics, summaries
from ebmrl.eval.frame_samples import clip_judge_frames, judge_frames
from ebmrl.eval.generation import GREEDY, ClipFrames, generate_outputs, outputs_by_sample
from ebmrl.eval.judge import METRICS, Judge, JudgeContext
from ebmrl.eval.outputs import SystemOutput
from ebmrl.eval.subset import seeded_subset
from ebmrl.frame_store import FrameStore, MissingClipError
from ebmrl.prompts.conversation import prompt_id
from ebmrl.schema import ProfileBook, Sample
from ebmrl.tags import DEFAULT_TAGS, TagNames
from ebmrl.video import VideoError


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
    judge_protocol: str | None = None
    judged: list[str] = field(default_factory=list)  # prompt ids of the judged samples


def generate_all(
    samples: Sequence[Sample],
    profiles: ProfileBook | None,
    clips: ClipFrames,
    systems: Sequence[tuple[EvalSystemSection, Callable[[], GenerationClient]]],
    *,
    max_new_tokens: int,
    decoding: DecodingSection = GREEDY,
    concurrency: int = 4,
    progress: bool = False,
    tags: TagNames = DEFAULT_TAGS,
) -> tuple[dict[str, dict[str, SystemOutput]], dict[str, dict[str, Any]]]:
    """Each system's outputs (its prompt mode, with or without the clip), one system at
    a time: its model is loaded, used, released (three 7B models need not fit in memory
    together). At most ``concurrency`` requests in flight (fewer if the backend takes
    fewer). Returns outputs and client stats."""
    per_system: dict[str, dict[str, SystemOutput]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for system, make_client in systems:
        name = system.name
        client = make_client()
        try:
            per_system[name] = generate_outputs(
                name,
                client,
                samples,
                clips,
                profiles,
                max_tokens=max_new_tokens,
                decoding=decoding,
                mode=system.prompt,
                with_frames=system.frames,
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


def judge_contexts(
    samples: Sequence[Sample],
    profiles: ProfileBook | None,
    store: FrameStore,
    clips: ClipFrames,
    *,
    source: str = "clip",
    count: int = 8,
    max_side: int = 512,
    with_frames: bool = True,
) -> dict[str, JudgeContext]:
    """What the judge is told about each sample, frames included (``with_frames``):
    ``source="clip"`` reads them from the raw clip the frame store recorded (once per
    clip), ``"store"`` picks them from the stored policy frames. A clip that cannot be
    read leaves that sample without frames, with the reason."""
    contexts: dict[str, JudgeContext] = {}
    read: dict[str, tuple[np.ndarray | None, str | None]] = {}
    for s in samples:
        clip_id = str(s.clip_id)
        if not with_frames:
            shown, problem = None, None
        elif clip_id in read:
            shown, problem = read[clip_id]
        else:
            problem = clips.why_missing(s)
            shown = None
            if problem is None and source == "store":
                shown = judge_frames(clips.of(s), count, max_side)
            elif problem is None:
                shown, problem = _raw_clip_frames(store, clip_id, count, max_side)
            read[clip_id] = (shown, problem)
        contexts[prompt_id(s)] = JudgeContext.from_sample(s, profiles, shown, problem)
    return contexts


def _raw_clip_frames(
    store: FrameStore, clip_id: str, count: int, max_side: int
) -> tuple[np.ndarray | None, str | None]:
    """The judge's frames read from the video the frame store recorded for the clip."""
    info = getattr(store, "info", None)  # an in-memory store records no videos
    try:
        uri = info(clip_id).get("uri") if info is not None else None
    except MissingClipError:
        uri = None
    if not uri:
        return None, f"the frame store records no video for clip {clip_id}"
    try:
        return clip_judge_frames(uri, count, max_side), None
    except VideoError as exc:
        return None, f"raw clip unreadable: {exc.reason} ({exc.uri})"


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
    judge_subset: int | None = None,
    subset_seed: int = 42,
    judge_frame_source: str = "clip",
    judge_frame_count: int = 8,
    judge_frame_side: int = 512,
    judge_concurrency: int = 1,
    bert: Any = None,
    clip: Any = None,
    bert_batch_size: int = 64,
    progress: bool = False,
) -> EvaluationResult:
    """Automatic metrics over every sample, the judge over a seeded random
    ``judge_subset`` of them (None: all; ``seeded_subset``), and the summaries."""
    systems = list(per_system)
    outputs = outputs_by_sample(per_system, samples)
    keys = [prompt_id(s) for s in samples for _ in systems]
    items = [
        auto_metrics.AutoItem(
            output,
            s.target.utterance,
            str(s.clip_id),
            s.scene_attributes.known() if s.scene_attributes is not None else None,
        )
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
    sample_keys = [prompt_id(s) for s in samples]
    judged = [] if judge is None else seeded_subset(sample_keys, judge_subset, subset_seed)
    chosen = set(judged)
    # Every sample's context (the report shows it); frames only for the judged ones.
    contexts = judge_contexts(samples, profiles, store, clips, with_frames=False)
    contexts.update(
        judge_contexts(
            [s for s in samples if prompt_id(s) in chosen],
            profiles,
            store,
            clips,
            source=judge_frame_source,
            count=judge_frame_count,
            max_side=judge_frame_side,
            with_frames=any(METRICS[m].sees_frames for m in judge_metrics),
        )
    )
    judgements: dict[str, summaries.SampleJudgements] | None = None
    judge_summary = pairwise = None
    protocol = judge.protocol if judge is not None else None
    if judge is not None:
        judgements = summaries.judge_samples(
            judge,
            {key: contexts[key] for key in judged},
            outputs,
            metrics=judge_metrics,
            pairs=pairs,
            concurrency=judge_concurrency,
            progress=progress,
        )
        judge_summary = summaries.judge_summary(judgements, systems, judge_metrics, protocol)
        pairwise = (
            summaries.pairwise_summary(judgements, pairs, judge_metrics, protocol)
            if pairs
            else None
        )
    records = []
    for s in samples:
        key = prompt_id(s)
        records.append(
            summaries.sample_record(
                contexts[key],
                outputs[key],
                judgements.get(key) if judgements is not None else None,
                auto_rows.get(key, {}),
                history=[(t.speaker, t.utterance) for t in s.dialogue],
                clip_problem=clips.why_missing(s),
            )
        )
    stats = dict(judge.stats) if judge is not None else {}
    metrics = summaries.metrics_file(
        samples=len(samples),
        systems=systems,
        judge=judge_summary,
        auto=auto,
        pairwise=pairwise,
        judged_samples=len(judged) if judge is not None else None,
    )
    return EvaluationResult(
        systems=systems,
        judge_metrics=list(judge_metrics) if judge is not None else [],
        auto=auto,
        judge=judge_summary,
        pairwise=pairwise,
        records=records,
        metrics=metrics,
        plot_rows=summaries.plot_rows(metrics),
        judge_stats=stats,
        judge_protocol=protocol,
        judged=judged,
    )
