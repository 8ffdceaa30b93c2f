"""What every reward returns: one float per completion, plus batch diagnostics.

Rewards are plain objects that take plain lists and return a ``RewardBatch``. The
``metrics`` are scalar diagnostics of that batch (truncation rates, missing-block
rates, ...) named the way they appear in the training logs; the TRL adapter forwards
them through TRL's ``log_metric`` and everyone else may ignore them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ebmrl.tags import as_text


@dataclass(frozen=True)
class RewardBatch:
    """``values[i]`` is the reward of completion ``i``; ``metrics`` describe the batch."""

    values: list[float]
    metrics: dict[str, float] = field(default_factory=dict)


def completion_texts(completions: Iterable[object]) -> list[str]:
    """Plain strings from whatever a trainer hands us (str, bytes, chat messages, None)."""
    return [as_text(c) for c in completions]


def rate(count: int, total: int) -> float:
    """``count / total``, 0 for an empty batch (a diagnostic must never be NaN)."""
    return count / total if total else 0.0


def check_lengths(name: str, expected: int, **columns: Sequence[object]) -> None:
    """Raise ``ValueError`` naming the column whose length differs from the completions."""
    for column, values in columns.items():
        if len(values) != expected:
            raise ValueError(
                f"{name} reward: {len(values)} values in column {column!r} for "
                f"{expected} completions (columns must be repeated once per completion)"
            )
