"""Read a model's VideoQA answer out of its ``<answer>`` block, robustly but never guessing.

The answer region is the ``<answer>`` block (its tags in any case), or, when there is
none, the text with its other blocks removed (``strip_blocks``). Then:

- **multiple choice** (``parse_choice``): a bare letter (``B``, ``(b)``, ``B.``), a leading
  letter with a delimiter (``B) a dog``, ``(C): ...``), an explicit phrase (``the answer is
  D``, ``option c``), or the text of exactly one option (after dropping options contained
  in a longer matching one). Several different letters, or nothing recognisable: None;
- **yes/no** (``parse_yes_no``): yes or no when exactly one of them is said;
- **open** (``parse_open``): the normalised text.

None means unparseable: the question counts as wrong, and is counted as unparseable.
Options are labelled by letters (ours) or by digits from 0 (the authors); the parser
reads either (``labels``).

``exact_match`` is the authors' scoring instead: the first closed ``<answer>`` block,
stripped, must be the gold label itself (ActivityNet-QA: the tags matched
case-insensitively, the text lower-cased, and with no block the last "yes" or "no" of
the whole text); anything else is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ebmrl.tags import (
    DEFAULT_ALIASES,
    DEFAULT_TAGS,
    as_text,
    first_block,
    strip_blocks,
    tag_names,
)

YES = {"yes", "yeah", "yep", "true"}
NO = {"no", "nope", "false"}
_PUNCT = re.compile(r"[^\w\s']+")


def answer_region(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> tuple[str, bool]:
    """The text to read the answer from, and whether it came from an ``<answer>`` block
    (``tags``: the tag names in use)."""
    names = tag_names(tags)
    block = first_block(as_text(text), names.answer, ignore_case=True)
    if block is not None:
        return block.strip(), True
    return strip_blocks(text, (*names, *DEFAULT_ALIASES.get(names.perception, ()))), False


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed, leading article removed."""
    words = _PUNCT.sub(" ", str(text).lower()).split()
    if words and words[0] in ("a", "an", "the") and len(words) > 1:
        words = words[1:]
    return " ".join(words)


def option_labels(count: int, digits: bool = False) -> str:
    """The labels of ``count`` options: "ABCDE" (ours) or "01234" (the authors)."""
    return "".join(str(i) if digits else chr(ord("A") + i) for i in range(count))


def parse_choice(
    text: str,
    options: Sequence[str],
    tags: Sequence[str] = DEFAULT_TAGS,
    labels: str | None = None,
) -> str | None:
    """The option label the answer names ("A", "B", ... or, with ``labels="01234"``,
    "0", "1", ...), or None."""
    region, _ = answer_region(text, tags)
    region = region.strip()
    letters = labels if labels is not None else option_labels(len(options))
    if not region or not letters:
        return None
    bare = region.strip(" \t\n\"'`*[](){}<>.:;,!?-")
    if len(bare) == 1 and bare.upper() in letters:
        return bare.upper()
    # "B) a dog", "(C) ...", "D. ...", "E: ..." at the start (upper case: "a dog" is not A).
    lead = re.match(rf"^[\s\"'*(\[]*([{letters}])\s*[).:\]]", region)
    if lead:
        return lead.group(1)
    # "answer is B", "option (c)", "choice: d." (a lower-case letter only when it stands
    # alone: "the answer is a dog" names no option).
    phrase = re.findall(
        rf"\b(?i:answer|option|choice)\s*(?i:is|:|=)?\s*"
        rf"(?:[(\[]([{letters}{letters.lower()}])[)\]]|([{letters}])\b"
        rf"|([{letters.lower()}])(?=\s*(?:$|[.,;:!?])))",
        region,
    )
    named = {"".join(groups).upper() for groups in phrase}
    if len(named) == 1:
        return named.pop()
    if len(named) > 1:
        return None
    said = normalise(region)
    texts = [normalise(o) for o in options]
    exact = [i for i, t in enumerate(texts) if t and t == said]
    if len(exact) == 1:
        return letters[exact[0]]
    contained = [
        i for i, t in enumerate(texts) if t and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", said)
    ]
    # An option inside a longer matching one ("dog" in "black dog") is not a second match.
    longest = [i for i in contained if not any(texts[i] in texts[j] and i != j for j in contained)]
    if len(longest) == 1:
        return letters[longest[0]]
    return None


def parse_yes_no(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> str | None:
    region, _ = answer_region(text, tags)
    words = normalise(region).split()
    said_yes, said_no = any(w in YES for w in words), any(w in NO for w in words)
    if said_yes == said_no:  # neither, or a hedge ("yes and no")
        return None
    return "yes" if said_yes else "no"


def parse_open(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> str | None:
    region, _ = answer_region(text, tags)
    return normalise(region) or None


_YES_NO_WORD = re.compile(r"\b(yes|no)\b")


def exact_match(
    text: str, gold: str, kind: str, tags: Sequence[str] = DEFAULT_TAGS
) -> tuple[bool, bool]:
    """(correct, has an answer block) the authors' way: ``gold`` is the label ("2") or
    the answer text ("yes"); ``kind`` the question kind (yes_no, choice, open)."""
    answer = tag_names(tags).answer
    text = str(text or "")
    if kind == "choice":
        block = first_block(text, answer)
        return block is not None and block.strip() == gold, block is not None
    block = first_block(text, answer, ignore_case=True)
    if block is not None:
        return block.strip().lower() == gold.strip().lower(), True
    if kind == "yes_no":  # their fallback: the last yes/no word of the whole text
        said = _YES_NO_WORD.findall(text.lower())
        return bool(said) and said[-1] == gold.strip().lower(), False
    return False, False
