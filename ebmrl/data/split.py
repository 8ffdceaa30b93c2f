"""Train/test split by session: no session, and no clip, ever on both sides.

Sessions that share a clip are joined into one group (union-find), so a clip's frames
can never leak from train into test through a second session. Groups are ordered by a
seeded hash (stable across runs and machines) and go to test until it holds
``test_fraction`` of the samples; both sides are non-empty when there are two groups.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

from ebmrl.schema import Sample


def session_groups(samples: Sequence[Sample]) -> list[list[str]]:
    """Sessions grouped so that sessions sharing a clip are together (sorted, stable)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_session_of_clip: dict[str, str] = {}
    for sample in samples:
        find(sample.session_id)
        if sample.clip_id is not None:
            other = first_session_of_clip.setdefault(sample.clip_id, sample.session_id)
            union(other, sample.session_id)
    groups: dict[str, list[str]] = defaultdict(list)
    for session in parent:
        groups[find(session)].append(session)
    return sorted(sorted(g) for g in groups.values())


def split_by_session(
    samples: Sequence[Sample], test_fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups = session_groups(samples)
    sizes: dict[str, int] = defaultdict(int)
    for sample in samples:
        sizes[sample.session_id] += 1
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g[0]}".encode()).hexdigest())
    target = test_fraction * len(samples)
    test_sessions: set[str] = set()
    held = 0
    for group in order[:-1] if len(order) > 1 else []:  # the last group always trains
        if held >= target and test_sessions:
            break
        size = sum(sizes[s] for s in group)
        if test_sessions and held + size > target * 1.5:
            continue  # a big group would overshoot: try smaller ones
        test_sessions.update(group)
        held += size
    train = [s for s in samples if s.session_id not in test_sessions]
    test = [s for s in samples if s.session_id in test_sessions]
    return train, test
