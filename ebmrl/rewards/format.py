"""The dense format reward (method.md section 2), exact and linear-time.

For tags ``("perception", "think", "answer")`` (the ``tags`` setting: the authors count
on ``("vision", "think", "answer")``) the score is the sum of:

- +0.5 for each of the six tags (``<perception>``, ``</perception>``, ...) that occurs
  exactly once in the text, -0.5 for each that does not (absent or repeated);
- +1 if a perception block, then a think block, then an answer block occur in that
  order somewhere in the text with only ``<``-free text between consecutive blocks,
  i.e. if ``re.search(r"<perception>.*?</perception>[^<]*<think>.*?</think>[^<]*"
  r"<answer>.*?</answer>", text, re.DOTALL)`` matches (extra blocks elsewhere do not
  cancel it), else 0;
- +0.5 if the text starts with ``<perception>`` after leading whitespace, else -1;
- +0.5 if the text ends with ``</answer>`` before trailing whitespace, else -1.

Range [-5, 5]. The ordered-blocks test gives the same answer as that regex but scans the
text a constant number of times: the regex backtracks quadratically on texts with many
repeated tags, and completions can be arbitrary (a 1 MB string of tags must not stall a
training step).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ebmrl.rewards.reward_batch import RewardBatch, completion_texts, rate
from ebmrl.tags import DEFAULT_TAGS, as_text, ordered_blocks

TAG_ONCE_BONUS = 0.5
TAG_COUNT_PENALTY = -0.5
ORDER_BONUS = 1.0
EDGE_BONUS = 0.5
EDGE_PENALTY = -1.0


def blocks_in_order(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> bool:
    """Whether ``<t1>…</t1>[^<]*<t2>…</t2>[^<]*…<tn>…</tn>`` occurs somewhere in ``text``
    (``ebmrl.tags.ordered_blocks``: the regex search's answer, in linear time)."""
    return ordered_blocks(text, tags) is not None


def format_score(text: object, tags: Sequence[str] = DEFAULT_TAGS) -> float:
    """The dense format reward of one completion, in [-5, 5] for three tags. Never raises."""
    source = as_text(text)
    tags = [str(t) for t in tags]
    score = 0.0
    for tag in tags:
        for marker in (f"<{tag}>", f"</{tag}>"):
            score += TAG_ONCE_BONUS if source.count(marker) == 1 else TAG_COUNT_PENALTY
    if blocks_in_order(source, tags):
        score += ORDER_BONUS
    if tags:
        # str.strip() and the reference regex's \s agree on every code point (checked).
        score += EDGE_BONUS if source.lstrip().startswith(f"<{tags[0]}>") else EDGE_PENALTY
        score += EDGE_BONUS if source.rstrip().endswith(f"</{tags[-1]}>") else EDGE_PENALTY
    return score


def max_format_score(tags: Sequence[str] = DEFAULT_TAGS) -> float:
    """The score of a perfectly formatted completion (5.0 for three tags)."""
    return 2 * len(tags) * TAG_ONCE_BONUS + ORDER_BONUS + 2 * EDGE_BONUS


class FormatReward:
    """``format_score`` over a batch, with the rate of perfectly formatted completions."""

    name = "format"

    def __init__(self, tags: Sequence[str] = DEFAULT_TAGS):
        self.tags = tuple(tags)

    def score(self, completions: Iterable[object]) -> RewardBatch:
        texts = completion_texts(completions)
        values = [format_score(t, self.tags) for t in texts]
        best = max_format_score(self.tags)
        perfect = sum(1 for v in values if v == best)
        return RewardBatch(values, {"rewards/format/perfect_rate": rate(perfect, len(values))})
