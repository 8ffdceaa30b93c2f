"""Parse the ``<perception>``/``<think>``/``<answer>`` blocks of a model output.

``parse`` never raises: model outputs during RL are arbitrary strings (empty, huge,
unclosed, nested, binary junk) and a reward must score them, not crash on them.

A block is read the way the authors' regular expressions read it: ``first_block(text,
tag)`` is what ``re.search(r"<tag>(.*?)</tag>", text, re.DOTALL)`` captures, i.e. from the
first ``<tag>`` to the first ``</tag>`` after it. ``ordered_blocks`` finds the first match
of several blocks in a row with only ``<``-free text between them (the format reward's
order test, the PCG trace). Both use ``str.find`` only, so they are linear in the text
length whatever the input (the regular expressions backtrack quadratically on texts with
many repeated tags).

The tag names are a setting (``TagNames``, params.yaml ``tags``): ours are
``perception, think, answer``; the authors' release and checkpoints use ``vision``
for the first block.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple


class TagNames(NamedTuple):
    """The tag written for each of the three roles, in output order."""

    perception: str = "perception"
    think: str = "think"
    answer: str = "answer"


DEFAULT_TAGS = TagNames()
AUTHORS_TAGS = TagNames("vision", "think", "answer")
ROLES: tuple[str, ...] = TagNames._fields

# The public release writes <vision> where the paper (and we) write <perception>: when
# reading data (not when scoring a model's output), either name is accepted for the other.
DEFAULT_ALIASES: Mapping[str, tuple[str, ...]] = {
    "perception": ("vision",),
    "vision": ("perception",),
}


def tag_names(value: Sequence[str] | None) -> TagNames:
    """``TagNames`` from any three-name sequence (``None``: ours)."""
    if value is None:
        return DEFAULT_TAGS
    names = [str(v) for v in value]
    if len(names) != 3:
        raise ValueError(f"tags are three names (perception, think, answer), got {names}")
    return TagNames(*names)


class ParsedBlocks:
    """The inner text of each requested tag (stripped), or ``None`` when absent.

    Attribute access works for every requested tag (``parsed.answer``); ``parsed["x"]``
    and ``parsed.get("x")`` work too. Unrequested names raise ``AttributeError`` as
    usual, so typos in calling code are not silently ``None``.
    """

    __slots__ = ("_blocks",)

    def __init__(self, blocks: dict[str, str | None]):
        object.__setattr__(self, "_blocks", blocks)

    def __getattr__(self, name: str) -> str | None:
        blocks = object.__getattribute__(self, "_blocks")
        if name in blocks:
            return blocks[name]
        raise AttributeError(name)

    def __getitem__(self, name: str) -> str | None:
        return self._blocks[name]

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._blocks.get(name)
        return default if value is None else value

    def as_dict(self) -> dict[str, str | None]:
        return dict(self._blocks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParsedBlocks) and self._blocks == other._blocks

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._blocks.items())
        return f"ParsedBlocks({inner})"


def as_text(value: object) -> str:
    """Coerce anything a generator might hand us into a ``str`` without raising."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if value is None:
        return ""
    # TRL passes conversational completions as [{"role": "assistant", "content": ...}].
    if isinstance(value, list | tuple):
        parts = []
        for item in value:
            if isinstance(item, Mapping):
                parts.append(as_text(item.get("content")))
            else:
                parts.append(as_text(item))
        return "".join(parts)
    if isinstance(value, Mapping) and "content" in value:
        return as_text(value["content"])
    try:
        return str(value)
    except Exception:
        return ""


def first_block(text: str, tag: str, *, ignore_case: bool = False) -> str | None:
    """Inner text (unstripped) from the first ``<tag>`` to the first ``</tag>`` after it.

    Exactly what ``re.search(f"<{tag}>(.*?)</{tag}>", text, re.DOTALL)`` captures (with
    ``re.IGNORECASE`` when ``ignore_case``): when the first opener has no closer after
    it, no later opener has one either.
    """
    if ignore_case:
        opener = re.compile(f"<{re.escape(tag)}>", re.IGNORECASE).search(text)
        if opener is None:
            return None
        closer = re.compile(f"</{re.escape(tag)}>", re.IGNORECASE).search(text, opener.end())
        return None if closer is None else text[opener.end() : closer.start()]
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    open_at = text.find(open_tag)
    if open_at < 0:
        return None
    inner_from = open_at + len(open_tag)
    close_at = text.find(close_tag, inner_from)
    if close_at < 0:
        return None
    return text[inner_from:close_at]


class Span(NamedTuple):
    """One block of a match: ``text[start:end]`` is the block, tags included, and
    ``text[inner_start:inner_end]`` its content."""

    start: int
    inner_start: int
    inner_end: int
    end: int


def ordered_blocks(text: str, tags: Sequence[str]) -> list[Span] | None:
    """The first match of ``<t1>.*?</t1>[^<]*<t2>.*?</t2>[^<]*...<tn>.*?</tn>`` (DOTALL),
    as the regular-expression search finds it, or None.

    Why scanning forward suffices: only ``<``-free text may follow block ``i``, so block
    ``i+1`` must open at the first ``<`` after a ``</ti>``; the search keeps the earliest
    ``</ti>`` for which that holds, which is the lazy quantifier's choice, because a later
    one can only make the rest harder to match (every later opening tag lies further
    right). The same argument puts the match at the first ``<t1>``. Each ``find`` resumes
    where the previous one ended (the next ``<`` after a closing tag is at most the next
    closing tag), so the scan is linear.
    """
    if not tags:
        return None
    opens = [f"<{t}>" for t in tags]
    closes = [f"</{t}>" for t in tags]
    start = text.find(opens[0])
    if start < 0:
        return None
    spans: list[Span] = []
    inner_from = start + len(opens[0])
    for i in range(len(tags) - 1):
        close_at = text.find(closes[i], inner_from)
        while close_at >= 0:
            after = close_at + len(closes[i])
            next_lt = text.find("<", after)
            # Only '<'-free text may separate the blocks: the next '<' must open block i+1.
            if next_lt >= 0 and text.startswith(opens[i + 1], next_lt):
                break
            close_at = text.find(closes[i], after)
        else:
            return None
        spans.append(Span(start, inner_from, close_at, close_at + len(closes[i])))
        start = next_lt
        inner_from = next_lt + len(opens[i + 1])
    close_at = text.find(closes[-1], inner_from)
    if close_at < 0:
        return None
    spans.append(Span(start, inner_from, close_at, close_at + len(closes[-1])))
    return spans


def parse(
    text: object,
    tags: Iterable[str] = DEFAULT_TAGS,
    aliases: Mapping[str, Iterable[str]] | None = None,
) -> ParsedBlocks:
    """Return the stripped content of the first block of each tag, keyed by tag name.

    ``aliases`` maps a tag to other names accepted for it when the tag itself is absent
    (default: ``vision`` and ``perception`` for each other). Never raises.
    """
    if aliases is None:
        aliases = DEFAULT_ALIASES
    try:
        source = as_text(text)
        tag_list = [str(t) for t in tags] if not isinstance(tags, str) else [tags]
    except Exception:
        source, tag_list = "", list(DEFAULT_TAGS)
    blocks: dict[str, str | None] = {}
    for tag in tag_list:
        inner = first_block(source, tag)
        if inner is None:
            for alias in aliases.get(tag, ()):
                inner = first_block(source, alias)
                if inner is not None:
                    break
        blocks[tag] = inner.strip() if inner is not None else None
    return ParsedBlocks(blocks)


def parse_roles(
    text: object,
    tags: Sequence[str] = DEFAULT_TAGS,
    aliases: Mapping[str, Iterable[str]] | None = None,
) -> ParsedBlocks:
    """``parse`` keyed by role (``.perception``, ``.think``, ``.answer``) whatever the tag
    names in use (``tags``: ours or the authors' ``vision, think, answer``)."""
    names = tag_names(tags)
    by_tag = parse(text, names, aliases)
    return ParsedBlocks({role: by_tag[tag] for role, tag in zip(ROLES, names, strict=True)})


def _tag_pattern(tags: Iterable[str]) -> re.Pattern[str]:
    names = sorted({str(t) for t in tags}, key=len, reverse=True)
    return re.compile("<(/?)(" + "|".join(re.escape(n) for n in names) + ")>", re.IGNORECASE)


def open_block(text: object, tag: str) -> str | None:
    """Content (unstripped) from the first ``<tag>`` to the first ``</tag>`` after it, or to
    the end of the text when it is never closed; tags matched case-insensitively; None
    without an opener. How the authors' judge reads the spoken line (a truncated output
    still said what it said)."""
    source = as_text(text)
    opener = re.compile(f"<{re.escape(tag)}>", re.IGNORECASE).search(source)
    if opener is None:
        return None
    closer = re.compile(f"</{re.escape(tag)}>", re.IGNORECASE).search(source, opener.end())
    return source[opener.end() : closer.start() if closer else len(source)]


def strip_blocks(text: object, tags: Iterable[str] = DEFAULT_TAGS) -> str:
    """The text with every block of ``tags`` and any stray tag of them removed,
    whitespace collapsed.

    Blocks go as ``re.sub(r"<(t1|t2|...)>.*?</\\1>", " ", text, flags=re.I | re.S)``
    removes them: the leftmost opener that has a closer of its own tag after it, to that
    first closer, then on from there; tag names match case-insensitively. Done over the
    tags' positions (found once), so it stays linear whatever the input. Used for the
    spoken line of an output that has no ``<answer>`` and for VideoQA answers.
    """
    source = as_text(text)
    tokens = list(_tag_pattern(tags).finditer(source))
    # For each token, the index of the next closer of the same tag (scanning backwards).
    next_closer: list[int | None] = [None] * len(tokens)
    last: dict[str, int] = {}
    for i in range(len(tokens) - 1, -1, -1):
        name = tokens[i].group(2).lower()
        next_closer[i] = last.get(name)
        if tokens[i].group(1):
            last[name] = i
    cuts: list[tuple[int, int]] = []
    i = 0
    while i < len(tokens):
        j = None if tokens[i].group(1) else next_closer[i]
        if j is None:  # a stray tag, or an opener never closed: the tag alone goes
            cuts.append(tokens[i].span())
            i += 1
        else:
            cuts.append((tokens[i].start(), tokens[j].end()))
            i = j + 1
    pieces, at = [], 0
    for start, end in cuts:
        pieces.append(source[at:start])
        at = end
    pieces.append(source[at:])
    return " ".join(" ".join(pieces).split())
