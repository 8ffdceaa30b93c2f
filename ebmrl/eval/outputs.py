"""A system's output for one sample, split into what it saw, thought and said.

The judge and the answer metrics look at the *spoken line* only (``spoken_line``, the
authors' judge's rule, for both tag sets): the content of the first ``<answer>`` (tag
matched case-insensitively) up to its closing tag, or to the end of the text when the
output stops before closing it; when there is no ``<answer>`` at all, the text with its
think and perception blocks (``vision`` and ``perception`` alike) and stray tags
removed, so a model that ignores the format is judged on what it said rather than
dropped. An empty spoken line is scored 0 without asking the judge. The perception,
think and answer shown in the report are the closed blocks (``parse_roles``) in the tag
names in use (params.yaml ``tags``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ebmrl.tags import (
    DEFAULT_ALIASES,
    DEFAULT_TAGS,
    TagNames,
    open_block,
    parse_roles,
    strip_blocks,
    tag_names,
)


def spoken_line(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> str:
    """The line a judge sees: the ``<answer>`` content (closed or not), else the text
    without its think and perception blocks; whitespace collapsed."""
    names = tag_names(tags)
    answer = open_block(text, names.answer)
    if answer is not None:
        return " ".join(answer.split())
    perception = (names.perception, *DEFAULT_ALIASES.get(names.perception, ()))
    return strip_blocks(text, (*perception, names.think, names.answer))


@dataclass(frozen=True)
class SystemOutput:
    """What one system wrote for one sample (``error`` set when it produced nothing)."""

    system: str
    text: str = ""
    error: str | None = None
    tags: TagNames = DEFAULT_TAGS

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def perception(self) -> str | None:
        return parse_roles(self.text, self.tags).perception

    @property
    def think(self) -> str | None:
        return parse_roles(self.text, self.tags).think

    @property
    def answer(self) -> str | None:
        return parse_roles(self.text, self.tags).answer

    @property
    def spoken(self) -> str:
        return spoken_line(self.text, self.tags) if self.ok else ""

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
