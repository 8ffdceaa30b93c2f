"""A system's output for one sample, split into what it saw, thought and said.

The judge and the answer metrics look at the *spoken line* only: the ``<answer>`` block,
or, when a system wrote none, its text with every other block (and stray tag) removed,
so a model that ignores the format is judged on what it said rather than dropped. An
empty spoken line is scored 0 without asking the judge.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ebmrl.tags import parse, strip_blocks


def spoken_line(text: str) -> str:
    """The line a judge sees: the ``<answer>`` block, else the text without blocks."""
    answer = parse(text).answer
    if answer is not None:
        return " ".join(answer.split())
    return strip_blocks(text)


@dataclass(frozen=True)
class SystemOutput:
    """What one system wrote for one sample (``error`` set when it produced nothing)."""

    system: str
    text: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def perception(self) -> str | None:
        return parse(self.text).perception

    @property
    def think(self) -> str | None:
        return parse(self.text).think

    @property
    def answer(self) -> str | None:
        return parse(self.text).answer

    @property
    def spoken(self) -> str:
        return spoken_line(self.text) if self.ok else ""

    @property
    def digest(self) -> str:
        """Content hash of the output (part of the judgement cache key)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {
            "system": self.system,
            "text": self.text,
            "error": self.error,
            "perception": self.perception,
            "think": self.think,
            "answer": self.answer,
            "spoken": self.spoken,
        }
