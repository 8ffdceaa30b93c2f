"""The words of the demo's scene grammar: writing captions and reading statements back.

A demo clip is drawn from six attributes (``ebmrl.demo.Scene``): the background
colour, the lighting, the number of figures, their colour, their motion and whether fire
(danger) is visible. This module holds the vocabulary of those attributes, with synonyms
for every value, and its two uses:

- ``write_caption``: a sentence or two stating some of a scene's attributes in varied
  words (the tiny CLIP learns to see from such captions, ``ebmrl.models.clip_training``);
- ``read_statements``: which value of each attribute a text states (the ground-truth
  perception metric, ``ebmrl.eval.perception``). A text may state an attribute not at
  all, once, or with conflicting values; every value it states is returned.

The two agree by construction: whatever ``write_caption`` states, ``read_statements``
reads back (a property test holds them to it). The reader is deliberately simple,
word-sequence matching with a little local grammar (a colour word belongs to the noun
that follows it: figures or the street), which is enough for the perceptions a model
writes about these scenes and never raises on any text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

ATTRIBUTES = ("background", "lighting", "figures", "figure_colour", "motion", "danger")

# Canonical colour -> the words that name it. One lexicon for both roles: "blue figures"
# is read as a (wrong) figure colour, not ignored.
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "blue": ("blue", "azure", "cobalt"),
    "green": ("green", "emerald", "jade"),
    "red": ("red", "crimson", "scarlet"),
    "yellow": ("yellow", "golden", "mustard"),
    "grey": ("grey", "gray", "ashen"),
    "purple": ("purple", "violet", "plum"),
    "white": ("white", "pale", "snowy"),
    "black": ("black", "inky", "coal-black"),
    "orange": ("orange", "tangerine", "copper"),
    "cyan": ("cyan", "turquoise", "teal"),
}
LIGHTING_WORDS: dict[str, tuple[str, ...]] = {
    "bright": ("bright", "brightly lit", "well lit", "sunlit"),
    "dim": ("dim", "dimly lit", "dark", "shadowy", "gloomy"),
}
COUNT_WORDS: dict[int, tuple[str, ...]] = {
    1: ("1", "one", "a single", "a lone", "single", "lone"),
    2: ("2", "two", "a pair of", "pair of"),
    3: ("3", "three", "a trio of", "trio of"),
    4: ("4", "four"),
    5: ("5", "five"),
    6: ("6", "six"),
}
MOTION_WORDS: dict[str, tuple[str, ...]] = {
    "still": ("standing still", "motionless", "not moving", "stationary", "holding still"),
    "left": (
        "walking to the left",
        "moving to the left",
        "to the left",
        "leftward",
        "heading left",
    ),
    "right": (
        "walking to the right",
        "moving to the right",
        "to the right",
        "rightward",
        "heading right",
    ),
    "approaching": (
        "coming closer",
        "approaching",
        "walking toward the camera",
        "moving closer",
        "drawing near",
    ),
}
# Danger: negated cues are read (and removed) first, so "no fire" never counts as fire.
SAFE_WORDS = ("no fire", "no flames", "no threat", "no danger", "not dangerous", "safe", "peaceful")
DANGER_WORDS = ("flames", "flame", "fire", "blaze", "burning", "dangerous", "danger")

FIGURE_NOUNS = ("figures", "people", "shapes", "silhouettes", "walkers")
FIGURE_NOUN = ("figure", "person", "shape", "silhouette", "walker")
PLACE_NOUNS = ("street", "alley", "lane", "square", "backdrop", "background", "walls", "road")

_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def scene_attributes(scene: Any) -> dict[str, Any]:
    """The ground truth of a ``demo.Scene`` as an attribute mapping."""
    return {name: getattr(scene, name) for name in ATTRIBUTES}


# ------------------------------------------------------------------------- reading
def words(text: str) -> list[str]:
    return _WORD.findall(str(text).lower())


def _find(tokens: list[str], phrase: str) -> list[int]:
    """Start positions of ``phrase`` (a word sequence) in ``tokens``."""
    needle = phrase.split()
    n = len(needle)
    return [i for i in range(len(tokens) - n + 1) if tokens[i : i + n] == needle]


def _phrases(table: Mapping[Any, tuple[str, ...]]) -> list[tuple[str, Any]]:
    """(phrase, value) pairs, longest phrase first, so "dimly lit" wins over "lit"."""
    pairs = [(p, v) for v, options in table.items() for p in options]
    return sorted(pairs, key=lambda pv: -len(pv[0].split()))


def _consume(tokens: list[str], table: Mapping[Any, tuple[str, ...]]) -> list[tuple[int, int, Any]]:
    """Non-overlapping (start, end, value) matches of the table's phrases."""
    taken = [False] * len(tokens)
    found = []
    for phrase, value in _phrases(table):
        n = len(phrase.split())
        for i in _find(tokens, phrase):
            if not any(taken[i : i + n]):
                taken[i : i + n] = [True] * n
                found.append((i, i + n, value))
    return sorted(found, key=lambda m: m[0])


_COLOUR_OF = {w: c for c, options in COLOUR_WORDS.items() for w in options}


def _noun_after(tokens: list[str], end: int, reach: int = 2) -> str | None:
    """``"figure"`` or ``"place"``: the first such noun within ``reach`` words after ``end``."""
    for token in tokens[end : end + reach + 1]:
        if token in FIGURE_NOUNS or token in FIGURE_NOUN:
            return "figure"
        if token in PLACE_NOUNS:
            return "place"
    return None


def read_statements(text: object) -> dict[str, set[Any]]:
    """Every value the text states for each attribute (an empty set: not stated)."""
    tokens = words(text if isinstance(text, str) else str(text or ""))
    stated: dict[str, set[Any]] = {name: set() for name in ATTRIBUTES}
    for i, token in enumerate(tokens):
        colour = _COLOUR_OF.get(token)
        if colour is None:
            continue
        # Lighting words may sit between a colour and its noun ("a blue, dim street").
        role = _noun_after(tokens, i + 1)
        if role == "figure":
            stated["figure_colour"].add(colour)
        elif role == "place":
            stated["background"].add(colour)
    stated["lighting"] = {v for _, _, v in _consume(tokens, LIGHTING_WORDS)}
    for _start, end, value in _consume(tokens, COUNT_WORDS):
        if _noun_after(tokens, end) == "figure":
            stated["figures"].add(value)
    for i, token in enumerate(tokens):  # "a figure", "an orange figure": one
        if token in ("a", "an") and i + 1 < len(tokens):
            window = tokens[i + 1 : i + 3]
            counted = {"single", "lone", "pair", "trio"} & set(window)  # read above
            if any(t in FIGURE_NOUN for t in window) and not counted:
                stated["figures"].add(1)
    stated["motion"] = {v for _, _, v in _consume(tokens, MOTION_WORDS)}
    rest = list(tokens)
    for start, end, _ in _consume(rest, {False: SAFE_WORDS}):
        stated["danger"].add(False)
        rest[start:end] = ["_"] * (end - start)
    if _consume(rest, {True: DANGER_WORDS}):
        stated["danger"].add(True)
    return stated


# ------------------------------------------------------------------------- writing
def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def write_caption(
    attributes: Mapping[str, Any], rng: np.random.Generator, mention: set[str] | None = None
) -> str:
    """A caption stating the ``mention``-ed attributes (default: all) in varied words."""
    mention = set(ATTRIBUTES) if mention is None else set(mention)
    a = attributes
    sentences = []
    subject = None
    if mention & {"figures", "figure_colour", "motion"}:
        count = a["figures"]
        plural = count > 1 or "figures" not in mention
        noun = _pick(rng, FIGURE_NOUNS if plural else FIGURE_NOUN)
        colour = _pick(rng, COLOUR_WORDS[a["figure_colour"]]) if "figure_colour" in mention else ""
        if "figures" in mention:
            number = _pick(rng, COUNT_WORDS[count][: 4 if count == 1 else 3])
            subject = " ".join(x for x in (number, colour, noun) if x)
        else:
            subject = " ".join(x for x in (colour, noun) if x)
        if "motion" in mention:
            subject += " " + _pick(rng, MOTION_WORDS[a["motion"]])
    place = None
    if mention & {"background", "lighting"}:
        light = _pick(rng, LIGHTING_WORDS[a["lighting"]]) if "lighting" in mention else ""
        colour = _pick(rng, COLOUR_WORDS[a["background"]]) if "background" in mention else ""
        noun = _pick(rng, PLACE_NOUNS if colour else ("street", "alley", "lane", "square"))
        place = " ".join(x for x in (light, colour, noun) if x)
    if subject and place:
        where = _pick(rng, ("in", "on", "in front of"))
        sentences.append(f"{subject} {where} {_article(place)} {place}.")
    elif subject:
        sentences.append(f"{subject}.")
    elif place:
        lead = _pick(rng, ("", "the view of ", "there is "))
        sentences.append(f"{lead}{_article(place)} {place}.")
    if "danger" in mention:
        # The demo's reference perceptions (demo.perception_text) are among the phrasings.
        options = (
            ("flames burn at the bottom of the frame.", "a fire blazes below.",
             "there is fire on the ground.", "the scene is dangerous.",
             "orange flames flicker at the bottom of the frame.",
             "the atmosphere is dangerous and tense.")
            if a["danger"]
            else ("no fire is visible.", "the scene is safe.", "there is no threat.",
                  "it looks peaceful.", "no fire or threat is visible.",
                  "the atmosphere is safe and calm.")
        )  # fmt: skip
        sentences.append(_pick(rng, options))
    if len(sentences) > 1 and rng.random() < 0.5:
        sentences.reverse()
    return " ".join(s[0].upper() + s[1:] for s in sentences)


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def random_mention(rng: np.random.Generator, keep: float = 0.7) -> set[str]:
    """A random, non-empty subset of the attributes to state."""
    chosen = {name for name in ATTRIBUTES if rng.random() < keep}
    return chosen or {ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]}
