"""The dense format reward: hand-computed cases and equivalence with the reference regex."""

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebmrl.rewards.format import FormatReward, blocks_in_order, format_score, max_format_score

GOOD = "<perception>Two figures walk.</perception><think>Calm.</think><answer>Evening.</answer>"

# (text, expected score, why): each expectation is the sum of the four parts of the
# definition, written out as tags(6 x ±0.5) + order(+1/0) + start(+0.5/-1) + end(+0.5/-1).
CASES = [
    (GOOD, 3 + 1 + 0.5 + 0.5, "perfect"),
    ("\n  " + GOOD.replace("><", ">\n<") + " \n", 3 + 1 + 0.5 + 0.5, "whitespace around/between"),
    ("", -3 + 0 - 1 - 1, "empty"),
    (
        "<perception>p</perception><answer>a</answer>",
        (4 * 0.5 - 2 * 0.5) + 0 + 0.5 + 0.5,
        "think block missing",
    ),
    (
        "<perception>p</perception><think>t</think><answer>a</answer><answer>b</answer>",
        (4 * 0.5 - 2 * 0.5) + 1 + 0.5 + 0.5,
        "answer block repeated (order still found)",
    ),
    (
        "<think>t</think><perception>p</perception><answer>a</answer>",
        3 + 0 - 1 + 0.5,
        "think before perception",
    ),
    ("Sure! " + GOOD, 3 + 1 - 1 + 0.5, "leading text"),
    (GOOD + " Hope this helps.", 3 + 1 + 0.5 - 1, "trailing text"),
    (
        "<perception>p</perception> <b> <think>t</think><answer>a</answer>",
        3 + 0 + 0.5 + 0.5,
        "a '<' between blocks breaks the order",
    ),
    (
        "<perception>p</perception> so then <think>t</think>\n<answer>a</answer>",
        3 + 1 + 0.5 + 0.5,
        "'<'-free text between blocks is allowed",
    ),
    (
        "<perception>a <b>bold</b> c</perception><think>t</think><answer>a</answer>",
        3 + 1 + 0.5 + 0.5,
        "'<' inside a block is allowed",
    ),
    (
        "<perception>p<think>t</think><answer>a",
        (4 * 0.5 - 2 * 0.5) + 0 + 0.5 - 1,
        "unclosed perception and answer",
    ),
    (
        "<perception>x</perception><think>y</think><answer>z</answer>" + GOOD,
        -3 + 1 + 0.5 + 0.5,
        "everything twice: extra blocks do not cancel the order bonus",
    ),
    (
        "<vision>p</vision><think>t</think><answer>a</answer>",
        (4 * 0.5 - 2 * 0.5) + 0 - 1 + 0.5,
        "the release's <vision> is not <perception> in model output",
    ),
    ("<answer>Run!</answer>", (2 * 0.5 - 4 * 0.5) + 0 - 1 + 0.5, "answer only"),
    (
        "<perception>火が見える。</perception><think>危険だ。</think><answer>逃げろ！</answer>",
        3 + 1 + 0.5 + 0.5,
        "other languages",
    ),
]


@pytest.mark.parametrize(("text", "expected", "why"), CASES, ids=[c[2] for c in CASES])
def test_hand_computed_cases(text, expected, why):
    assert format_score(text) == expected, why


def test_range_end_points():
    assert max_format_score() == 5.0
    assert format_score(GOOD) == 5.0
    assert format_score("") == -5.0


def test_other_tag_names():
    text = "<vision>p</vision><think>t</think><answer>a</answer>"
    assert format_score(text, tags=("vision", "think", "answer")) == 5.0


def test_non_string_completions():
    assert format_score([{"role": "assistant", "content": GOOD}]) == 5.0
    assert format_score(GOOD.encode()) == 5.0
    assert format_score(None) == -5.0


def test_batch_reports_perfect_rate():
    batch = FormatReward().score([GOOD, "", GOOD + "x", GOOD])
    assert batch.values == [5.0, -5.0, 3 + 1 + 0.5 - 1, 5.0]
    assert batch.metrics == {"rewards/format/perfect_rate": 0.5}


# The method's definition of the order bonus, as the authors' regex (with our tag names).
REFERENCE_ORDER = re.compile(
    r"<perception>.*?</perception>[^<]*<think>.*?</think>[^<]*<answer>.*?</answer>", re.DOTALL
)
PIECES = [
    "<perception>",
    "</perception>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "x",
    "<",
    " ",
    "\n",
    "<b>",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=24).map("".join))
@pytest.mark.slow
def test_order_check_equals_reference_regex(text):
    assert blocks_in_order(text) == bool(REFERENCE_ORDER.search(text))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_score_is_in_range(text):
    assert -5.0 <= format_score(text) <= 5.0


def test_pathological_repetition_stays_linear():
    # ~1 MB of closed perception blocks never followed by <think>: the reference regex
    # tries every opening x every closing tag (quadratic, minutes); the scan is linear.
    text = "<perception></perception>" * 40_000 + "<think>"
    start = time.perf_counter()
    score = format_score(text)
    elapsed = time.perf_counter() - start
    assert score == (-2 * 0.5 + 0.5 - 3 * 0.5) + 0 + 0.5 - 1
    assert elapsed < 2.0, f"format_score took {elapsed:.2f}s on 1 MB: not linear?"
