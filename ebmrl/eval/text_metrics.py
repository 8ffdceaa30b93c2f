"""Small, pure text metrics: ROUGE-L and distinct-n over word tokens.

Tokens are lower-cased runs of letters, digits and apostrophes (punctuation dropped), the
usual preprocessing of ROUGE for English. Every function returns 0.0 for empty input
rather than raising or returning NaN: a system that said nothing scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[0-9a-z']+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (apostrophes kept inside words: ``don't``)."""
    return [w for w in (m.strip("'") for m in _WORD.findall(str(text or "").lower())) if w]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a)·len(b)))."""
    if not a or not b:
        return 0
    if len(b) > len(a):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str, beta: float = 1.0) -> float:
    """ROUGE-L F-measure of ``candidate`` against ``reference`` (Lin, 2004).

    P = LCS / |candidate|, R = LCS / |reference|, F = (1 + b²)PR / (R + b²P); with the
    default beta = 1 this is the harmonic mean that common ROUGE packages report as
    ``rougeL`` F1.
    """
    cand, ref = words(candidate), words(reference)
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    b2 = beta * beta
    return (1 + b2) * precision * recall / (recall + b2 * precision)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams / all n-grams, pooled over ``texts``.

    Pass one text for a per-reply score, all of a system's replies for its corpus score.
    """
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = ngrams(words(text), n)
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0
