"""Reward curves in numbers: the first and last windows of a GRPO run's log history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def window_means(values: Sequence[float], window: int) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    window = max(1, min(window, len(values) // 2 or 1))
    first = sum(values[:window]) / window
    last = sum(values[-window:]) / window
    return first, last


def reward_summary(
    history: Sequence[dict[str, Any]], reward_names: Sequence[str], window: int | None = None
) -> dict[str, float | None]:
    """Mean of ``reward`` and each ``rewards/<name>/mean`` over the first and last windows.

    ``window`` defaults to a quarter of the logged steps (at least one).
    """
    steps = [entry for entry in history if "reward" in entry]
    if window is None:
        window = max(1, len(steps) // 4)
    summary: dict[str, float | None] = {"logged_steps": len(steps)}
    keys = {"reward": "reward"} | {name: f"rewards/{name}/mean" for name in reward_names}
    for label, key in keys.items():
        values = [float(entry[key]) for entry in steps if key in entry]
        first, last = window_means(values, window)
        summary[f"{label}_first"] = None if first is None else round(first, 4)
        summary[f"{label}_last"] = None if last is None else round(last, 4)
    return summary
