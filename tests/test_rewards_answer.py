"""Answer faithfulness: BERTScore F1 of <answer> against the reference, with a real scorer."""

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ebmrl import config
from ebmrl.rewards import reward_models
from ebmrl.rewards.answer import AnswerReward, clip_unit, make_bert_scorer

REF = "Fire on the ground, get back now."


@pytest.fixture(scope="module")
def scorer(tiny_models):
    return make_bert_scorer(str(tiny_models["text_encoder"]), num_layers=2)


class CountingScorer:
    """Delegates to the real BERTScorer and records each call."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def score(self, cands, refs, batch_size=64):
        self.calls.append((list(cands), list(refs), batch_size))
        return self.inner.score(cands, refs, batch_size=batch_size)


def wrap(answer: str) -> str:
    return f"<perception>p</perception><think>t</think><answer>{answer}</answer>"


def test_identical_answer_scores_one_and_missing_scores_zero(scorer):
    batch = AnswerReward(scorer).score(
        [wrap(REF), "<perception>p</perception><think>t</think>", wrap("   "), REF], [REF] * 4
    )
    # Identical text: every token matches itself with cosine 1, so P = R = F1 = 1.
    assert batch.values[0] == pytest.approx(1.0, abs=1e-5)
    # No <answer> block, an empty one, and a bare reply without tags: all "missing".
    assert batch.values[1:] == [0.0, 0.0, 0.0]
    assert batch.metrics == {"rewards/answer/missing_rate": 0.75}


def test_empty_reference_scores_zero(scorer):
    assert AnswerReward(scorer).score([wrap("Run!")], ["  "]).values == [0.0]


def test_whole_group_in_one_call_and_scores_match_pairwise(scorer):
    counting = CountingScorer(scorer)
    answers = ["Get back now.", "Fire!", "", "The lantern is blue.", "Fire on the ground."]
    completions = [wrap(a) for a in answers]
    batch = AnswerReward(counting, batch_size=3).score(completions, [REF] * 5)
    assert len(counting.calls) == 1
    cands, refs, batch_size = counting.calls[0]
    assert cands == [a for a in answers if a] and refs == [REF] * 4 and batch_size == 3
    for answer, value in zip(answers, batch.values, strict=True):
        if not answer:
            assert value == 0.0
            continue
        _, _, f1 = scorer.score([answer], [REF])
        assert value == pytest.approx(clip_unit(float(f1[0])), abs=1e-6)
        assert 0.0 <= value <= 1.0
    # A partial paraphrase scores below the exact reference but above 0.
    assert 0 < batch.values[4] < 1


@pytest.mark.parametrize(
    ("raw", "clipped"),
    [
        (-0.2, 0.0),
        (0.0, 0.0),
        (0.37, 0.37),
        (1.0, 1.0),
        (1.3, 1.0),
        (math.nan, 0.0),
        (math.inf, 0.0),
    ],
)
def test_scores_are_clipped_to_the_unit_interval(raw, clipped):
    assert clip_unit(raw) == clipped


def test_scorer_from_params(tiny_models):
    params = config.validate(
        {
            "models": {"text_encoder": str(tiny_models["text_encoder"]), "text_encoder_layers": 1},
            "rewards": {"answer": {"batch_size": 7}},
        }
    )
    scorer = reward_models.answer_scorer(params.models, params.rewards.answer)
    assert scorer.num_layers == 1 and scorer.batch_size == 7
    assert AnswerReward(scorer).score([wrap(REF)], [REF]).values[0] == pytest.approx(1.0, abs=1e-5)


class RecordingF1:
    """Records the candidates it is sent; F1 = 1 for every pair (no model needed)."""

    def __init__(self):
        self.cands = []

    def score(self, cands, refs, batch_size=64):
        import torch

        self.cands.extend(cands)
        ones = torch.ones(len(cands))
        return ones, ones, ones


def authors_answer(text):
    """The authors' extract_answer: re.search(r"<answer>(.*?)</answer>", DOTALL), stripped."""
    import re

    match = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return match.group(1).strip() if match else ""


ANSWER_PIECES = ["<answer>", "</answer>", "<think>", "</think>", "<", ">", "Run", " ", "\n"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(ANSWER_PIECES), max_size=20).map("".join))
@example("<answer> first <answer> second </answer> third </answer>")
@pytest.mark.slow
def test_answer_text_is_the_authors_first_block(text):
    recorder = RecordingF1()
    batch = AnswerReward(recorder).score([text], [REF])
    expected = authors_answer(text)
    assert recorder.cands == ([expected] if expected else [])
    assert batch.values == [1.0 if expected else 0.0]


def test_only_free_form_rows_are_scored():
    recorder = RecordingF1()
    batch = AnswerReward(recorder).score(
        [wrap("Run!")] * 3, [REF] * 3, ["free-form", "multiple-choice", None]
    )
    assert batch.values == [1.0, 0.0, 1.0] and recorder.cands == ["Run!", "Run!"]
