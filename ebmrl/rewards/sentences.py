"""Split model text into sentences (CLIP SentTopK, PCG leak filter), by one of two rules.

``rule="ebmrl"`` (our default): a sentence ends after ``.``, ``!``, ``?`` or ``…``
followed by whitespace, after the CJK marks ``。！？`` (no space needed), or at a line
break. Pieces without any letter or digit ("...", "—") and bare list numbers ("1.",
"2)") are dropped. Abbreviations such as "Mr. X" split: acceptable for both uses, which
only need sentence-sized pieces.

``rule="authors"`` (the released CLIP SentTopK server): split at every ``.``, ``!``,
``?``, ``。``, ``！``, ``？`` and newline (so "3.5 m" and "e.g." split too); keep the
stripped pieces longer than 5 characters that are not a bare number. Short sentences
("Run!", "Fire.") are dropped, which is why we keep our rule as the default.

Neither rule falls back to the whole text; the caller decides (the CLIP reward scores a
text with no sentence as one sentence, as the authors do). Both patterns have no nested
or overlapping quantifiers, so splitting stays linear even on pathological input.
"""

from __future__ import annotations

import re
from typing import Literal

SentenceRule = Literal["ebmrl", "authors"]
SENTENCE_RULES: tuple[str, ...] = ("ebmrl", "authors")

_BREAK = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])|\n+")
_LIST_NUMBER = re.compile(r"\d{1,3}[.)]?")
_AUTHORS_BREAK = re.compile(r"[.!?。！？\n]")
_AUTHORS_NUMBER = re.compile(r"\d+\.?")
_AUTHORS_MIN_CHARS = 5  # a kept piece is longer than this


def _is_sentence(piece: str) -> bool:
    if _LIST_NUMBER.fullmatch(piece):
        return False
    return any(ch.isalnum() for ch in piece)


def _ebmrl(text: str) -> list[str]:
    pieces = (piece.strip() for piece in _BREAK.split(text))
    return [piece for piece in pieces if piece and _is_sentence(piece)]


def _authors(text: str) -> list[str]:
    pieces = (piece.strip() for piece in _AUTHORS_BREAK.split(text))
    return [
        piece
        for piece in pieces
        if len(piece) > _AUTHORS_MIN_CHARS and not _AUTHORS_NUMBER.fullmatch(piece)
    ]


def split_sentences(text: str, rule: SentenceRule = "ebmrl") -> list[str]:
    """The sentences of ``text``, stripped, in order, by ``rule`` (module docstring)."""
    if rule == "ebmrl":
        return _ebmrl(text)
    if rule == "authors":
        return _authors(text)
    raise ValueError(f"unknown sentence rule {rule!r}; use one of {SENTENCE_RULES}")
