"""ROUGE-L, distinct-n and the spoken line, against hand-computed values."""

import pytest

from ebmrl.eval.outputs import SystemOutput, spoken_line
from ebmrl.eval.text_metrics import distinct_n, lcs_length, ngrams, rouge_l, words


def test_words_lowercase_and_drop_punctuation():
    assert words("Eyes UP, everyone! Don't panic...") == [
        "eyes",
        "up",
        "everyone",
        "don't",
        "panic",
    ]
    assert words("") == [] and words(None) == []


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (["a", "b", "c", "d"], ["a", "c", "d"], 3),
        (["a", "b", "c", "d"], ["d", "c", "b", "a"], 1),
        ([], ["a"], 0),
        (["x", "a", "y", "b", "z", "c"], ["a", "b", "c"], 3),
    ],
)
def test_lcs_length(a, b, expected):
    assert lcs_length(a, b) == expected == lcs_length(b, a)


@pytest.mark.parametrize(
    ("candidate", "reference", "expected"),
    [
        # LCS "the cat on the mat" = 5 of 6 words each side: P = R = F = 5/6.
        ("the cat sat on the mat", "the cat lay on the mat", 5 / 6),
        # Lin (2004): LCS "police the gunman" = 3 of 4: F = 0.75.
        ("police killed the gunman", "police kill the gunman", 0.75),
        # LCS 2 ("b c"); P = 2/2, R = 2/5, F = 2PR/(P+R) = 0.8/1.4.
        ("b c", "a b x c y", 2 * 1 * 0.4 / 1.4),
        ("identical words here", "Identical, words here!", 1.0),
        ("nothing shared", "at all", 0.0),
        ("", "reference", 0.0),
    ],
)
def test_rouge_l_hand_computed(candidate, reference, expected):
    assert rouge_l(candidate, reference) == pytest.approx(expected)


def test_distinct_n_hand_computed():
    texts = ["a a b", "a b c"]
    # unigrams a a b a b c: 3 distinct of 6; bigrams (a a)(a b)(a b)(b c): 3 of 4.
    assert distinct_n(texts, 1) == pytest.approx(0.5)
    assert distinct_n(texts, 2) == pytest.approx(0.75)
    assert distinct_n(["one"], 2) == 0.0 and distinct_n([], 1) == 0.0
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    with pytest.raises(ValueError):
        ngrams(["a"], 0)


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("<perception>p</perception><think>t</think><answer> Eyes  up! </answer>", "Eyes up!"),
        ("<perception>p</perception> We hold the line.", "We hold the line."),
        ("<think>only thinking</think>", ""),
        ("<answer></answer>", ""),
        ("", ""),
    ],
)
def test_spoken_line_is_the_answer_or_the_text_without_blocks(text, spoken):
    assert spoken_line(text) == spoken


def test_system_output_parts_and_digest():
    out = SystemOutput(
        "grpo", "<perception>fire</perception><think>run</think><answer>Go!</answer>"
    )
    assert (out.perception, out.think, out.answer, out.spoken) == ("fire", "run", "Go!", "Go!")
    assert out.digest != SystemOutput("grpo", "other").digest
    failed = SystemOutput("grpo", error="no model")
    assert not failed.ok and failed.spoken == ""
