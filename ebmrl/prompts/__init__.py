"""Prompt templates, in our own words, shipped as package data.

``load(name)`` returns the text of ``ebmrl/prompts/<name>.txt``; templates use
``str.format`` fields. ``version(name)`` is a short content hash, so caches and judgements
keyed by it are invalidated when a prompt's wording changes.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    try:
        return resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no prompt template named {name!r} in ebmrl/prompts/") from None


def version(name: str) -> str:
    return hashlib.sha256(load(name).encode("utf-8")).hexdigest()[:12]
