"""Ground-truth perception accuracy: does the ``<perception>`` say what the clip shows?

For a clip whose scene attributes are known (``Sample.scene_attributes``: the demo's
rendered clips), each known attribute the perception speaks of is either stated
correctly (every value it states for it is the true one) or stated wrongly (it states a
value the clip does not show: a hallucination); attributes it does not mention are
neither. Values are read with the attribute vocabulary and its synonyms
(``ebmrl.scene_words.read_statements``), so "two teal silhouettes on a gloomy
cobalt backdrop" counts as much as the demo's own wording.

- ``perception_accuracy``: correctly stated attributes / known attributes;
- ``perception_hallucinated``: wrongly stated attributes / known attributes.

A missing or empty perception states nothing: accuracy 0, hallucinated 0. A clip without
ground truth gets no value at all (``None``), never a zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ebmrl.scene_words import ATTRIBUTES, read_statements


def perception_scores(
    perception: str | None, truth: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The two shares and, per known attribute, ``"correct"``/``"wrong"``/``"unstated"``;
    ``None`` when nothing about the clip is known."""
    known = {k: v for k, v in (truth or {}).items() if k in ATTRIBUTES and v is not None}
    if not known:
        return None
    stated = read_statements(perception or "")
    verdicts = {}
    for name, value in known.items():
        said = stated[name]
        verdicts[name] = "unstated" if not said else "correct" if said == {value} else "wrong"
    counts = {kind: sum(v == kind for v in verdicts.values()) for kind in ("correct", "wrong")}
    return {
        "perception_accuracy": round(counts["correct"] / len(known), 6),
        "perception_hallucinated": round(counts["wrong"] / len(known), 6),
        "perception_attributes": verdicts,
    }
