"""Answer faithfulness: BERTScore F1 of the ``<answer>`` block against the reference.

method.md section 2: F1 between the answer ``a`` and the reference reply ``y*`` (paper
setting: ``microsoft/deberta-xlarge-mnli``, no idf, no baseline rescaling), clipped to
[0, 1]. The answer is read as the authors read it: from the first ``<answer>`` to the
first ``</answer>`` after it, stripped (``ebmrl.tags.first_block``). 0 when the answer is
missing or empty, likewise when the reference is empty (there is nothing to be faithful
to), and for a row whose ``problem_type`` is given and is not ``free-form`` (the authors
score only free-form replies). The scorer is a persistent ``bert_score.BERTScorer``
built once (``make_bert_scorer``); one call scores the whole group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from ebmrl.rewards.reward_batch import RewardBatch, check_lengths, completion_texts, rate
from ebmrl.tags import DEFAULT_TAGS, first_block

FREE_FORM = "free-form"


class F1Scorer(Protocol):
    """``bert_score.BERTScorer``'s interface: ``score(cands, refs) -> (P, R, F)`` tensors."""

    def score(
        self, cands: list[str], refs: list[str], batch_size: int = ...
    ) -> tuple[Any, Any, Any]: ...


def make_bert_scorer(model: str, num_layers: int, device: str = "cpu", batch_size: int = 64) -> Any:
    """A persistent BERTScorer for a hub id or local folder, paper settings (no idf, no
    rescaling). bert-score needs the layer for any model outside its own table."""
    from bert_score import BERTScorer

    from ebmrl.models import load_text_encoder_spec

    spec = load_text_encoder_spec(model, num_layers)
    return BERTScorer(
        **spec, batch_size=batch_size, device=device, idf=False, rescale_with_baseline=False
    )


def clip_unit(value: float) -> float:
    """Clip to [0, 1]; a non-finite score (a scorer failure on odd input) counts as 0."""
    if not math.isfinite(value):
        return 0.0
    return min(1.0, max(0.0, value))


class AnswerReward:
    """BERTScore F1 of each completion's answer against its reference reply."""

    name = "answer"

    def __init__(
        self, scorer: F1Scorer, batch_size: int = 64, answer_tag: str = DEFAULT_TAGS.answer
    ):
        self.scorer = scorer
        # BERTScorer.score takes its batch size per call (the constructor's is ignored).
        self.batch_size = batch_size
        self.answer_tag = answer_tag

    def score(
        self,
        completions: Sequence[object],
        references: Sequence[str],
        problem_types: Sequence[str | None] | None = None,
    ) -> RewardBatch:
        texts = completion_texts(completions)
        check_lengths("answer", len(texts), references=references)
        if problem_types is not None:
            check_lengths("answer", len(texts), problem_type=problem_types)
        answers = [(first_block(t, self.answer_tag) or "").strip() for t in texts]
        refs = [str(r or "").strip() for r in references]
        if problem_types is not None:
            refs = [
                r if kind in (None, FREE_FORM) else ""
                for r, kind in zip(refs, problem_types, strict=True)
            ]
        # bert-score 0.3.13 crashes on an empty or whitespace-only string under
        # transformers 5, and an empty answer deserves 0 anyway: never send one.
        scored = [i for i, (a, r) in enumerate(zip(answers, refs, strict=True)) if a and r]
        values = [0.0] * len(texts)
        if scored:
            _, _, f1 = self.scorer.score(
                [answers[i] for i in scored], [refs[i] for i in scored], batch_size=self.batch_size
            )
            for i, f in zip(scored, f1.tolist(), strict=True):
                values[i] = clip_unit(float(f))
        missing = sum(1 for a in answers if not a)
        return RewardBatch(values, {"rewards/answer/missing_rate": rate(missing, len(texts))})
