"""Seeded random subsets, drawn the way the authors draw theirs.

``random.Random(seed).sample`` of the positions, kept in their original order: the same
seed on the same list picks the same items on every run and machine (Python's ``random``
is stable across versions for ``sample`` of a ``range``), and the authors' seed (42) on
the authors' list picks their items.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def seeded_subset(items: Sequence[T], size: int | None, seed: int) -> list[T]:
    """``size`` of ``items`` chosen at random with ``seed``, in their order (all of them
    when ``size`` is None or not smaller than the list)."""
    if size is not None and size < 0:
        raise ValueError(f"a subset size is >= 0, got {size}")
    if size is None or size >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), size))
    return [items[i] for i in chosen]
