"""Automatic metrics of the role-play outputs, per sample and per system.

Per output (``score_outputs``):

- ``bertscore_f1``: BERTScore F1 of the spoken line against the reference reply (the
  rewards' scorer: ``models.text_encoder``), clipped to [0, 1]; 0 for an empty line;
- ``rouge_l``: ROUGE-L F1 of the spoken line against the reference;
- ``clipscore``: CLIPScore (Hessel et al., 2021) of the ``<perception>`` block against the
  clip, averaged over the stored frames: ``2.5 * max(0, mean_t cos(text, frame_t))``,
  with frame embeddings read from the frame store; 0 when there is no perception;
- ``clip_reward``: the CLIP reward as GRPO trains on it (Max variant: the highest cosine
  of the perception with any stored frame); 0 when there is no perception;
- ``perception_accuracy`` / ``perception_hallucinated``: the share of the clip's known
  scene attributes the perception states correctly / wrongly (``ebmrl.eval.perception``),
  only for clips with ground truth (``AutoItem.truth``);
- ``format_score`` (the dense format reward, in [-5, 5]) and ``format_ok`` (1 when
  perfect): the format-compliance rate is the mean of ``format_ok``;
- ``answer_words``: words in the spoken line; ``has_answer``: an ``<answer>`` block exists;
- ``distinct_1`` / ``distinct_2`` within the line.

Per system (``summarize``): the mean of each, and distinct-1/2 pooled over all of the
system's lines (the usual corpus-level diversity). A value that could not be computed
(e.g. the clip's frames are missing) is ``None`` and left out of the means, and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ebmrl.eval.outputs import SystemOutput
from ebmrl.eval.perception import perception_scores
from ebmrl.eval.text_metrics import distinct_n, rouge_l, words
from ebmrl.frame_store import l2_normalise
from ebmrl.rewards.answer import F1Scorer, clip_unit
from ebmrl.rewards.clip import ClipTextEncoder, max_frame_similarity
from ebmrl.rewards.format import format_score, max_format_score

CLIPSCORE_WEIGHT = 2.5  # Hessel et al.: rescales CLIP cosines to roughly [0, 1]

PER_SYSTEM_METRICS = (
    "bertscore_f1",
    "rouge_l",
    "clipscore",
    "clip_reward",
    "perception_accuracy",
    "perception_hallucinated",
    "format_ok",
    "format_score",
    "answer_words",
    "has_answer",
)


@dataclass(frozen=True)
class AutoItem:
    """One output to score: the system's output, the sample's reference and clip, and the
    clip's known scene attributes (``None``: no ground truth)."""

    output: SystemOutput
    reference: str
    clip_id: str
    truth: Mapping[str, Any] | None = None


def clip_score(text_embedding: np.ndarray, frame_embeddings: np.ndarray) -> float:
    """``2.5 * max(0, mean over frames of cos(text, frame))``."""
    frames = l2_normalise(np.asarray(frame_embeddings, dtype=np.float64))
    text = l2_normalise(np.asarray(text_embedding, dtype=np.float64).reshape(1, -1))
    if frames.ndim != 2 or frames.shape[0] == 0 or frames.shape[1] != text.shape[1]:
        raise ValueError(f"frame embeddings {frames.shape} do not match text {text.shape}")
    return CLIPSCORE_WEIGHT * max(0.0, float((frames @ text[0]).mean()))


def score_outputs(
    items: Sequence[AutoItem],
    *,
    bert: F1Scorer | None = None,
    clip: ClipTextEncoder | None = None,
    frame_embeddings: Callable[[str], np.ndarray] | None = None,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """One dict of metrics per item (items whose output failed get an empty dict)."""
    results: list[dict[str, Any]] = [{} for _ in items]
    best = max_format_score()  # 5 for any three tags
    for row, item in zip(results, items, strict=True):
        if not item.output.ok:
            continue
        spoken = item.output.spoken
        fmt = format_score(item.output.text, item.output.tags)
        row.update(
            rouge_l=round(rouge_l(spoken, item.reference), 6),
            format_score=fmt,
            format_ok=float(fmt == best),
            answer_words=float(len(words(spoken))),
            has_answer=float(item.output.answer is not None),
            distinct_1=round(distinct_n([spoken], 1), 6),
            distinct_2=round(distinct_n([spoken], 2), 6),
            bertscore_f1=None,
            clipscore=None,
            clip_reward=None,
        )
        scores = perception_scores(item.output.perception, item.truth)
        if scores is not None:
            row.update(scores)
    ok = [i for i, item in enumerate(items) if item.output.ok]
    if bert is not None:
        _bertscore(items, results, ok, bert, batch_size)
    if clip is not None and frame_embeddings is not None:
        _clipscore(items, results, ok, clip, frame_embeddings)
    return results


def _bertscore(items, results, ok, bert: F1Scorer, batch_size: int) -> None:
    pairs = [(i, items[i].output.spoken, " ".join(items[i].reference.split())) for i in ok]
    # bert-score crashes on empty strings; an empty line deserves 0 anyway.
    asked = [(i, a, r) for i, a, r in pairs if a and r]
    for i, _, _ in pairs:
        results[i]["bertscore_f1"] = 0.0
    if asked:
        _, _, f1 = bert.score(
            [a for _, a, _ in asked], [r for _, _, r in asked], batch_size=batch_size
        )
        for (i, _, _), value in zip(asked, f1.tolist(), strict=True):
            results[i]["bertscore_f1"] = round(clip_unit(float(value)), 6)


def _clipscore(items, results, ok, clip: ClipTextEncoder, frame_embeddings) -> None:
    perceptions = {i: items[i].output.perception or "" for i in ok}
    asked = [i for i in ok if perceptions[i]]
    for i in ok:
        if not perceptions[i]:
            results[i]["clipscore"] = results[i]["clip_reward"] = 0.0
    if not asked:
        return
    encoded = clip.encode_texts([perceptions[i] for i in asked])
    for row, i in enumerate(asked):
        try:
            frames = frame_embeddings(items[i].clip_id)
        except (KeyError, OSError, ValueError):  # a missing clip: left out, not zero
            continue
        results[i]["clipscore"] = round(clip_score(encoded.vectors[row], frames), 6)
        results[i]["clip_reward"] = round(max_frame_similarity(encoded.vectors[row], frames), 6)
        results[i]["clip_truncated"] = float(encoded.truncated[row])


def summarize(items: Sequence[AutoItem], per_item: Sequence[dict[str, Any]]) -> dict[str, dict]:
    """Per system: the mean of each metric over the outputs where it exists, corpus
    distinct-1/2, and counts of scored outputs."""
    systems: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        systems.setdefault(item.output.system, []).append(index)
    summary: dict[str, dict] = {}
    for system, indices in systems.items():
        scored = [i for i in indices if per_item[i]]
        entry: dict[str, Any] = {"outputs": len(indices), "scored": len(scored)}
        entry["perception_scored"] = sum(
            1 for i in scored if per_item[i].get("perception_accuracy") is not None
        )
        for name in PER_SYSTEM_METRICS:
            values = [per_item[i][name] for i in scored if per_item[i].get(name) is not None]
            entry[name] = round(float(np.mean(values)), 6) if values else None
        entry["perception_by_attribute"] = _by_attribute(
            [
                per_item[i]["perception_attributes"]
                for i in scored
                if "perception_attributes" in per_item[i]
            ]
        )
        spoken = [items[i].output.spoken for i in scored]
        entry["distinct_1"] = round(distinct_n(spoken, 1), 6) if scored else None
        entry["distinct_2"] = round(distinct_n(spoken, 2), 6) if scored else None
        summary[system] = entry
    return summary


def _by_attribute(verdicts: Sequence[Mapping[str, str]]) -> dict[str, dict[str, float]]:
    """Per attribute: the share of outputs stating it correctly and wrongly (for the report)."""
    names = dict.fromkeys(name for v in verdicts for name in v)
    out = {}
    for name in names:
        said = [v[name] for v in verdicts if name in v]
        out[name] = {
            kind: round(sum(x == kind for x in said) / len(said), 6)
            for kind in ("correct", "wrong")
        }
    return out
