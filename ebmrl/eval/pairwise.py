"""Pairwise judging that cancels position bias: A vs B asked in both orders.

For systems X and Y the judge is asked twice: once with X's line as [A] (``first``) and
once with Y's line as [A] (``second``). Each verdict gives a point to the system it
prefers; the pair's outcome for X is a win when X has more points, a loss when Y has
more, and a tie otherwise. A judge that always prefers whatever is shown first therefore
gives X one point and Y one point: a tie, never a win. Such contradictory pairs are also
counted (``position_flips``) as a measure of the judge's position bias.

Per pair and metric the tally reports the win rate (ties count half), the decisive win
rate (wins over wins and losses), the net win rate ((wins - losses) over the scored
pairs), and the exact two-sided binomial p-value of the wins against the losses (ties
left out, H0: either system wins with probability 1/2). A verdict from the first order
whose second order failed is counted on its own (``first_order_only_*``): the authors'
script keeps it as the pair's outcome, so the authors' figures (``authors_figures``)
include it; ours leave it out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["win", "tie", "loss"]
CONFIDENCES = ("high", "medium", "low")


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


def first_order_outcome(first: str) -> Outcome:
    """X's outcome from the first order alone (X shown as [A])."""
    if first not in ("A", "B", "tie"):
        raise ValueError(f"a verdict is 'A', 'B' or 'tie', got {first!r}")
    return {"A": "win", "B": "loss", "tie": "tie"}[first]


def position_flip(first: str, second: str) -> bool:
    """Both orders preferred the same *position*: the verdict followed the label, not the line."""
    return first == second and first in ("A", "B")


def binomial_p_value(wins: int, losses: int) -> float | None:
    """Exact two-sided binomial test of H0 "each side wins with probability 1/2" on the
    decisive outcomes: the probability under H0 of every outcome no more likely than the
    one observed (compared exactly, in integers). None without a decisive outcome."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be >= 0, got {wins} and {losses}")
    n = wins + losses
    if n == 0:
        return None
    observed = math.comb(n, wins)
    tail = sum(c for c in (math.comb(n, k) for k in range(n + 1)) if c <= observed)
    return min(1.0, tail / 2**n)


def _figures(win: int, tie: int, loss: int) -> dict[str, float | int]:
    scored = win + tie + loss
    out: dict[str, float | int] = {
        # Ties count half: the usual win rate of pairwise preference studies.
        "win_rate": round((win + 0.5 * tie) / scored, 4) if scored else 0.0,
        "net_win_rate": round((win - loss) / scored, 4) if scored else 0.0,
    }
    if win + loss:
        out["decisive_win_rate"] = round(win / (win + loss), 4)
        out["p_value"] = round(binomial_p_value(win, loss), 6)
    return out


@dataclass
class PairTally:
    """Counts of X's outcomes against Y on one metric, over samples."""

    win: int = 0
    tie: int = 0
    loss: int = 0
    not_scored: int = 0
    position_flips: int = 0
    first_order_only: dict[str, int] = field(
        default_factory=lambda: {"win": 0, "tie": 0, "loss": 0}
    )
    confidence: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CONFIDENCES, 0))
    reasons: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        first: str | None,
        second: str | None,
        error: str | None = None,
        confidences: tuple[str | None, ...] = (),
    ) -> None:
        for level in confidences:
            if level in self.confidence:
                self.confidence[level] += 1
        if first is None or second is None:
            why = error or "no verdict"
            self.reasons[why] = self.reasons.get(why, 0) + 1
            if first is not None:  # the second order failed: kept apart
                self.first_order_only[first_order_outcome(first)] += 1
            else:
                self.not_scored += 1
            return
        outcome = combine_orders(first, second)
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.position_flips += position_flip(first, second)

    @property
    def scored(self) -> int:
        return self.win + self.tie + self.loss

    def authors_figures(self) -> dict[str, float | int]:
        """As the authors' script counts: first-order-only verdicts are outcomes too."""
        win, tie, loss = (
            getattr(self, k) + self.first_order_only[k] for k in ("win", "tie", "loss")
        )
        return {"win": win, "tie": tie, "loss": loss, **_figures(win, tie, loss)}

    def as_dict(self, authors: bool = False) -> dict:
        out: dict = {
            "win": self.win,
            "tie": self.tie,
            "loss": self.loss,
            "not_scored": self.not_scored,
            "position_flips": self.position_flips,
            **_figures(self.win, self.tie, self.loss),
            "first_order_only": sum(self.first_order_only.values()),
            **{f"first_order_only_{k}": v for k, v in self.first_order_only.items()},
            **{f"confidence_{k}": v for k, v in self.confidence.items()},
        }
        if authors:
            out["authors"] = self.authors_figures()
        return out
