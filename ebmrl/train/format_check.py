"""Greedy generations on held-out samples, scored by the format reward.

Measures whether SFT taught the output layout: the same check runs on the model before
and after training, so the comparison is honest (same samples, same decoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ebmrl.frame_store import FrameStore
from ebmrl.models.vlm import generate_text
from ebmrl.rewards.format import format_score
from ebmrl.tags import DEFAULT_TAGS


def greedy_format_scores(
    model: Any,
    processor: Any,
    rows: Sequence[dict[str, Any]],
    frame_store: FrameStore,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 4,
    tags: Sequence[str] = DEFAULT_TAGS,
) -> tuple[list[float], list[str]]:
    """Format reward of the model's greedy output for each row's prompt and clip."""
    was_training = model.training
    model.eval()
    scores, texts = [], []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            outputs = generate_text(
                model,
                processor,
                [row["prompt"] for row in chunk],
                [frame_store.frames(row["clip_id"]) for row in chunk],
                max_new_tokens=max_new_tokens,
            )
            texts += outputs
            scores += [format_score(text, tags) for text in outputs]
    finally:
        model.train(was_training)
    return scores, texts
