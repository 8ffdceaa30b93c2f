"""Split model text into sentences (CLIP SentTopK, PCG leak filter).

A sentence ends after ``.``, ``!``, ``?`` or ``…`` followed by whitespace, after the
CJK marks ``。！？`` (no space needed), or at a line break. Pieces without any letter
or digit ("...", "—") and bare list numbers ("1.", "2)") are dropped. Abbreviations such
as "Mr. X" split: acceptable for both uses, which only need sentence-sized pieces.

The pattern has no nested or overlapping quantifiers, so splitting stays linear even on
pathological input (long runs of whitespace or punctuation).
"""

from __future__ import annotations

import re

_BREAK = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])|\n+")
_LIST_NUMBER = re.compile(r"\d{1,3}[.)]?")


def _is_sentence(piece: str) -> bool:
    if _LIST_NUMBER.fullmatch(piece):
        return False
    return any(ch.isalnum() for ch in piece)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, in order."""
    pieces = (piece.strip() for piece in _BREAK.split(text))
    return [piece for piece in pieces if piece and _is_sentence(piece)]
