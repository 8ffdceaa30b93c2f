"""Leak filter for the PCG reward: drop think sentences that restate the reference reply.

The PCG reward pays for a perception + think that make the reference reply more likely.
Copying the reply into ``<think>`` is the cheapest way to do that. The filter embeds
every think sentence and the reference, and drops the sentences whose cosine to the
reference exceeds ``threshold`` (0.4-0.55 in the authors' later variant) before the
think is scored. A think with nothing removed is passed on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ebmrl.frame_store import l2_normalise
from ebmrl.rewards.sentences import split_sentences

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class FilteredThink:
    """The think text to score, and how many of its ``total`` sentences were dropped."""

    text: str
    removed: int
    total: int


class LeakFilter:
    """Drop think sentences too close to the reference (one embedding call per batch)."""

    def __init__(self, embed: Embed, threshold: float = 0.5):
        if not -1 <= threshold <= 1:
            raise ValueError(f"leak filter threshold is a cosine in [-1, 1], got {threshold}")
        self.embed = embed
        self.threshold = threshold

    def filter(self, thinks: Sequence[str], references: Sequence[str]) -> list[FilteredThink]:
        split = [split_sentences(t) for t in thinks]
        distinct_refs = list(dict.fromkeys(references))
        texts = [s for sentences in split for s in sentences] + distinct_refs
        if not any(split):
            return [FilteredThink(t, 0, 0) for t in thinks]
        vectors = l2_normalise(np.asarray(self.embed(texts), dtype=np.float64))
        ref_vector = dict(
            zip(distinct_refs, vectors[len(texts) - len(distinct_refs) :], strict=True)
        )
        out, row = [], 0
        for think, sentences, reference in zip(thinks, split, references, strict=True):
            sims = vectors[row : row + len(sentences)] @ ref_vector[reference]
            row += len(sentences)
            kept = [s for s, sim in zip(sentences, sims, strict=True) if sim <= self.threshold]
            removed = len(sentences) - len(kept)
            text = think if removed == 0 else " ".join(kept)
            out.append(FilteredThink(text, removed, len(sentences)))
        return out
