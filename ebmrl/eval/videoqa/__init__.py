"""Zero-shot VideoQA: benchmark loaders, robust answer parsing, scoring."""

from __future__ import annotations

from pathlib import Path

from ebmrl.eval.subset import seeded_subset
from ebmrl.eval.videoqa.formats import (
    LOADERS,
    AnnotationError,
    QAItem,
    load_activitynet_qa,
    load_nextqa,
    load_pororoqa,
    nextqa_group,
)

__all__ = [
    "LOADERS",
    "AnnotationError",
    "QAItem",
    "load_activitynet_qa",
    "load_benchmark",
    "load_nextqa",
    "load_pororoqa",
    "nextqa_group",
]


def load_benchmark(
    format: str,
    annotations: str | Path,
    videos: str | Path,
    *,
    answers: str | Path | None = None,
    video_map: str | Path | None = None,
    name: str | None = None,
    max_questions: int | None = None,
    seed: int = 42,
) -> list[QAItem]:
    """The questions of one benchmark in its standard format; with ``max_questions``, a
    random subset of that many drawn with ``seed``, in file order (as the authors draw
    theirs, ``seeded_subset``)."""
    name = name or format
    if format == "activitynet_qa":
        if answers is None:
            raise AnnotationError("activitynet_qa needs its answers file (*_a.json)")
        items = load_activitynet_qa(annotations, answers, videos, video_map=video_map, name=name)
    elif format in LOADERS:
        items = LOADERS[format](annotations, videos, video_map=video_map, name=name)
    else:
        raise AnnotationError(f"unknown VideoQA format {format!r}; use one of {sorted(LOADERS)}")
    return seeded_subset(items, max_questions, seed)
