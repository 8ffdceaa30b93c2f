"""Pairwise judging that cancels position bias: A vs B asked in both orders.

For systems X and Y the judge is asked twice: once with X's line as [A] (``first``) and
once with Y's line as [A] (``second``). Each verdict gives a point to the system it
prefers; the pair's outcome for X is a win when X has more points, a loss when Y has
more, and a tie otherwise. A judge that always prefers whatever is shown first therefore
gives X one point and Y one point: a tie, never a win. Such contradictory pairs are also
counted (``position_flips``) as a measure of the judge's position bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["win", "tie", "loss"]


def combine_orders(first: str, second: str) -> Outcome:
    """X's outcome from the verdict with X shown as [A] (``first``) and with Y shown as
    [A] (``second``); each verdict is "A", "B" or "tie"."""
    for verdict in (first, second):
        if verdict not in ("A", "B", "tie"):
            raise ValueError(f"a verdict is 'A', 'B' or 'tie', got {verdict!r}")
    x_points = (first == "A") + (second == "B")
    y_points = (first == "B") + (second == "A")
    if x_points > y_points:
        return "win"
    if x_points < y_points:
        return "loss"
    return "tie"


def position_flip(first: str, second: str) -> bool:
    """Both orders preferred the same *position*: the verdict followed the label, not the line."""
    return first == second and first in ("A", "B")


@dataclass
class PairTally:
    """Counts of X's outcomes against Y on one metric, over samples."""

    win: int = 0
    tie: int = 0
    loss: int = 0
    not_scored: int = 0
    position_flips: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, first: str | None, second: str | None, error: str | None = None) -> None:
        if first is None or second is None:
            self.not_scored += 1
            why = error or "no verdict"
            self.reasons[why] = self.reasons.get(why, 0) + 1
            return
        outcome = combine_orders(first, second)
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.position_flips += position_flip(first, second)

    @property
    def scored(self) -> int:
        return self.win + self.tie + self.loss

    def as_dict(self) -> dict[str, float | int]:
        scored = self.scored
        return {
            "win": self.win,
            "tie": self.tie,
            "loss": self.loss,
            "not_scored": self.not_scored,
            "position_flips": self.position_flips,
            # Ties count half: the usual win rate of pairwise preference studies.
            "win_rate": round((self.win + 0.5 * self.tie) / scored, 4) if scored else 0.0,
        }
