"""A reward of a user's, added through params.yaml alone (tests/test_rewards_trl.py)."""

from ebmrl.rewards.reward_batch import RewardBatch
from ebmrl.tags import as_text


def brevity(completions, *, reference):
    """1 for a completion no longer than its reference, falling as it grows."""
    lengths = [len(as_text(c)) for c in completions]
    values = [min(1.0, (len(r) + 1) / (n + 1)) for n, r in zip(lengths, reference, strict=True)]
    return RewardBatch(values, {"rewards/brevity/empty_rate": lengths.count(0) / len(lengths)})


def needs_speaker(completions, *, speaker):
    return [1.0 for _ in completions]
