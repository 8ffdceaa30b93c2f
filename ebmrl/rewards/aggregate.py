"""Group-relative advantages from several rewards (method.md section 2, "Combination").

Rows come in groups of ``group_size`` consecutive completions of the same prompt (TRL's
layout). Two modes:

- ``normalize_then_sum`` (the paper's choice): each reward is standardised within its
  group, ``(r - mean_G) / (std_G + eps)`` with the unbiased standard deviation, then the
  standardised rewards are summed with the weights. A reward that is constant within a
  group contributes exactly 0 there (not ``rounding error / eps``).
- ``sum_then_normalize`` (TRL's default): the weighted sum of the raw rewards is
  standardised within its group.

Missing values (``None`` or NaN) mean "this reward did not score this row":

- a missing value is left out of its group's mean and standard deviation, and adds
  nothing to its row's sum (in ``sum_then_normalize`` it therefore counts as 0 in the
  weighted sum, as in TRL);
- a group with fewer than two present values of a reward gets 0 from that reward;
- a row with every reward missing is unscorable: it is left out of all statistics and its
  advantage is 0.

Infinite values are errors (a reward returning inf is a bug, not a signal).

TRL 1.16 differs from the paper in two constants, both reproducible here:
``eps`` is 1e-4 in TRL (1e-6 in the paper), and TRL's ``normalize_then_sum`` also
standardises the summed values across the whole batch (``batch_normalize=True``).
Within a batch that is a positive rescaling (the summed values already have group mean
0), so it changes the size of the advantages but not their order or sign.
``ebmrl.rewards.trl_adapter.trl_advantages`` calls ``combine`` with TRL's settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

PAPER_EPS = 1e-6
Aggregation = Literal["normalize_then_sum", "sum_then_normalize"]
AGGREGATIONS: tuple[str, ...] = ("normalize_then_sum", "sum_then_normalize")


def _as_column(name: str, values: Sequence[float | None]) -> np.ndarray:
    column = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    infinite = np.flatnonzero(np.isinf(column))
    if infinite.size:
        row = int(infinite[0])
        raise ValueError(
            f"reward {name!r} is infinite at row {row} ({column[row]}): fix the reward"
        )
    return column


def standardise(values: np.ndarray, eps: float) -> np.ndarray:
    """``(v - mean) / (std + eps)`` over the present (non-NaN) values; NaN stays NaN.

    Fewer than two present values, or all present values equal, give 0: there is no
    spread to learn from.
    """
    out = np.full_like(values, math.nan)
    present = ~np.isnan(values)
    kept = values[present]
    if kept.size < 2 or kept.max() == kept.min():
        out[present] = 0.0
        return out
    out[present] = (kept - kept.mean()) / (kept.std(ddof=1) + eps)
    return out


def group_standardise(values: np.ndarray, group_size: int, eps: float) -> np.ndarray:
    """``standardise`` applied to each run of ``group_size`` consecutive values."""
    out = np.empty_like(values)
    for start in range(0, values.size, group_size):
        out[start : start + group_size] = standardise(values[start : start + group_size], eps)
    return out


def combine(
    rewards: Mapping[str, Sequence[float | None]],
    weights: Mapping[str, float],
    group_size: int,
    mode: Aggregation = "normalize_then_sum",
    *,
    eps: float = PAPER_EPS,
    batch_normalize: bool = False,
) -> list[float]:
    """One advantage per row from named per-row rewards (see the module docstring).

    ``rewards[name][i]`` is reward ``name`` of row ``i``; every reward needs a weight in
    ``weights`` (extra weights are ignored). ``batch_normalize`` (``normalize_then_sum``
    only) standardises the weighted sums across the whole batch, as TRL does.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation mode {mode!r}; use one of {AGGREGATIONS}")
    if batch_normalize and mode != "normalize_then_sum":
        raise ValueError("batch_normalize applies to normalize_then_sum only")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not rewards:
        raise ValueError("no rewards to combine")
    missing = [name for name in rewards if name not in weights]
    if missing:
        raise ValueError(f"no weight for reward(s) {missing}; weights given: {sorted(weights)}")
    lengths = {name: len(values) for name, values in rewards.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"rewards have different lengths: {lengths}")
    rows = next(iter(lengths.values()))
    if rows % group_size:
        raise ValueError(f"{rows} rows is not a whole number of groups of {group_size}")

    names = list(rewards)
    table = np.stack([_as_column(n, rewards[n]) for n in names], axis=1)  # (rows, rewards)
    w = np.array([float(weights[n]) for n in names], dtype=np.float64)
    unscorable = np.isnan(table).all(axis=1)

    if mode == "normalize_then_sum":
        normalised = np.stack(
            [group_standardise(table[:, k], group_size, eps) for k in range(len(names))], axis=1
        )
        summed = np.nansum(normalised * w, axis=1)
        summed[unscorable] = math.nan
        advantages = standardise(summed, eps) if batch_normalize else summed
    else:
        summed = np.nansum(table * w, axis=1)
        summed[unscorable] = math.nan
        advantages = group_standardise(summed, group_size, eps)
    return [0.0 if math.isnan(a) else float(a) for a in advantages]
