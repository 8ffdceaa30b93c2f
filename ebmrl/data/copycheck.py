"""Does a reference trace copy the reply it leads to? (method.md section 4: the trace
writer sees the reply but must not copy it, or the model learns to leak it.)

``copy_score`` is the share of the reply's word n-grams (n = 3, fewer for very short
replies) that also occur in the trace: 1.0 when the reply appears verbatim, near 0 for
a trace that only shares a few common words.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def copy_score(trace: str, reply: str, n: int = 3) -> float:
    reply_words = _WORD.findall(reply.lower())
    if not reply_words:
        return 0.0
    n = min(n, len(reply_words))
    wanted = _ngrams(reply_words, n)
    found = _ngrams(_WORD.findall(trace.lower()), n)
    return len(wanted & found) / len(wanted)


def copies_reply(trace: str, reply: str, threshold: float) -> bool:
    """A trace whose score reaches ``threshold`` counts as a copy (0 rejects every trace)."""
    return copy_score(trace, reply) >= threshold
