"""Parse the ``<perception>``/``<think>``/``<answer>`` blocks of a model output.

``parse`` never raises: model outputs during RL are arbitrary strings (empty, huge,
unclosed, nested, binary junk) and a reward must score them, not crash on them.

A block is *well formed* when an opening tag is followed by its closing tag with no
other opening tag of the same name in between; ``parse`` returns the first such block
(the one whose closing tag comes first). The scan uses ``str.find``/``rfind`` only, so
it is linear in the text length whatever the input (no regex backtracking).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEFAULT_TAGS: tuple[str, ...] = ("perception", "think", "answer")

# The public data release writes <vision> where the paper (and we) write <perception>.
DEFAULT_ALIASES: Mapping[str, tuple[str, ...]] = {"perception": ("vision",)}


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


def first_block(text: str, tag: str) -> str | None:
    """Inner text of the first well-formed ``<tag>…</tag>`` block, unstripped."""
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    search_from = 0
    while True:
        close_at = text.find(close_tag, search_from)
        if close_at < 0:
            return None
        # No opener exists before search_from (else we would have returned), so the
        # backwards search never rescans: the whole scan stays linear.
        open_at = text.rfind(open_tag, search_from, close_at)
        if open_at >= 0:
            return text[open_at + len(open_tag) : close_at]
        # A stray closing tag with no opener before it: look further on.
        search_from = close_at + len(close_tag)


def parse(
    text: object,
    tags: Iterable[str] = DEFAULT_TAGS,
    aliases: Mapping[str, Iterable[str]] | None = None,
) -> ParsedBlocks:
    """Return the stripped inner text of the first well-formed block of each tag.

    ``aliases`` maps a tag to other names accepted for it when the tag itself is absent
    (default: ``vision`` for ``perception``). Never raises.
    """
    if aliases is None:
        aliases = DEFAULT_ALIASES
    try:
        source = as_text(text)
        tag_names = [str(t) for t in tags] if not isinstance(tags, str) else [tags]
    except Exception:
        source, tag_names = "", list(DEFAULT_TAGS)
    blocks: dict[str, str | None] = {}
    for tag in tag_names:
        inner = first_block(source, tag)
        if inner is None:
            for alias in aliases.get(tag, ()):
                inner = first_block(source, alias)
                if inner is not None:
                    break
        blocks[tag] = inner.strip() if inner is not None else None
    return ParsedBlocks(blocks)


def strip_blocks(text: object, tags: Iterable[str] = DEFAULT_TAGS) -> str:
    """The text with every well-formed block of ``tags`` and any stray tag removed.

    Used when a judge needs the spoken line of an output that has no ``<answer>``.
    """
    source = as_text(text)
    for tag in tags:
        while (inner := first_block(source, tag)) is not None:
            block = f"<{tag}>{inner}</{tag}>"
            source = source.replace(block, " ", 1)
        source = source.replace(f"<{tag}>", " ").replace(f"</{tag}>", " ")
    return " ".join(source.split())
