"""Pairwise judging in both orders cancels position bias (a planted one included)."""

import numpy as np
import pytest
from conftest import RuleJudge

from ebmrl.backends import GenerationClient, RetryPolicy
from ebmrl.backends.openai_http import OpenAIHTTPBackend
from ebmrl.demo import profile_book
from ebmrl.eval.judge import Judge, JudgeContext
from ebmrl.eval.outputs import SystemOutput
from ebmrl.eval.pairwise import PairTally, combine_orders, position_flip
from ebmrl.eval.summaries import judge_samples, pairwise_summary
from ebmrl.schema import load_released


@pytest.mark.parametrize(
    ("first", "second", "outcome", "flip"),
    [
        ("A", "B", "win", False),  # X preferred in both orders
        ("B", "A", "loss", False),
        ("A", "A", "tie", True),  # the judge followed the position: no information
        ("B", "B", "tie", True),
        ("tie", "tie", "tie", False),
        ("A", "tie", "win", False),
        ("tie", "A", "loss", False),
    ],
)
def test_combine_orders(first, second, outcome, flip):
    assert combine_orders(first, second) == outcome
    assert position_flip(first, second) is flip


def test_combine_orders_rejects_unknown_verdicts():
    with pytest.raises(ValueError, match="'C'"):
        combine_orders("C", "A")


def test_tally_counts_and_win_rate():
    tally = PairTally()
    for first, second in [("A", "B"), ("A", "A"), ("B", "A"), ("A", "B")]:
        tally.add(first, second)
    tally.add(None, "A", "judge unavailable: down")
    assert tally.as_dict() == {
        "win": 2,
        "tie": 1,
        "loss": 1,
        "not_scored": 1,
        "position_flips": 1,
        "win_rate": 0.625,
        "net_win_rate": 0.25,  # (2 - 1) / 4
        "decisive_win_rate": 0.6667,  # 2 / 3
        "p_value": 1.0,  # 2 wins, 1 loss: every outcome of 3 is as likely or less
        "first_order_only": 0,
        "first_order_only_win": 0,
        "first_order_only_tie": 0,
        "first_order_only_loss": 0,
        "confidence_high": 0,
        "confidence_medium": 0,
        "confidence_low": 0,
    }
    assert tally.reasons == {"judge unavailable: down": 1}


@pytest.fixture(scope="module")
def contexts_and_outputs(demo_data):
    samples = load_released(demo_data["samples"])[:4]
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    contexts = {
        str(s.sample_id): JudgeContext.from_sample(s, profile_book(), frames) for s in samples
    }
    lines = {  # grpo says more in every sample, so a fair word-count judge prefers it
        "grpo": "Eyes up everyone, the fire is spreading, move now.",
        "base": "Hello.",
    }
    outputs = {
        key: [SystemOutput(name, f"<answer>{line}</answer>") for name, line in lines.items()]
        for key in contexts
    }
    return contexts, outputs


def judge_for(http_model, model):
    backend = OpenAIHTTPBackend(http_model(model).url, model.model_id, api_key_env=None)
    return Judge(GenerationClient(backend, None, RetryPolicy(max_retries=0)), None)


def test_a_judge_that_always_prefers_the_first_label_yields_ties(http_model, contexts_and_outputs):
    contexts, outputs = contexts_and_outputs
    model = RuleJudge(first_label=True)
    judge = judge_for(http_model, model)
    results = judge_samples(
        judge, contexts, outputs, metrics=["veg", "cn"], pairs=[("grpo", "base")], concurrency=2
    )
    summary = pairwise_summary(results, [("grpo", "base")], ["veg", "cn"])["grpo_vs_base"]
    for metric in ("veg", "cn"):
        counts = ("win", "tie", "loss", "not_scored", "position_flips", "win_rate")
        assert {k: summary[metric][k] for k in counts} == {
            "win": 0,
            "tie": 4,
            "loss": 0,
            "not_scored": 0,
            "position_flips": 4,
            "win_rate": 0.5,
        }
        # Nothing decisive: no decisive win rate and no p-value to report.
        assert summary[metric]["net_win_rate"] == 0.0
        assert "decisive_win_rate" not in summary[metric] and "p_value" not in summary[metric]
    # Both orders were really asked: 4 samples x 2 metrics x 2 orders (+ 8 listwise).
    assert sum(r["pairwise"] for r in model.requests) == 16
    # The same bias in the listwise prompt lands on whichever system drew label A.
    firsts = {results[k].listwise["veg"].labels["A"] for k in contexts}
    assert all(
        results[k].listwise["veg"].scores[results[k].listwise["veg"].labels["A"]] == 90
        for k in contexts
    )
    assert firsts <= {"grpo", "base"}


def test_a_fair_judge_gives_the_same_winner_in_both_orders(http_model, contexts_and_outputs):
    contexts, outputs = contexts_and_outputs
    judge = judge_for(http_model, RuleJudge())
    results = judge_samples(
        judge, contexts, outputs, metrics=["spc"], pairs=[("grpo", "base"), ("base", "grpo")]
    )
    summary = pairwise_summary(results, [("grpo", "base"), ("base", "grpo")], ["spc"])
    assert (
        summary["grpo_vs_base"]["spc"]["win"] == 4
        and summary["grpo_vs_base"]["spc"]["position_flips"] == 0
    )
    assert summary["base_vs_grpo"]["spc"]["loss"] == 4
    first = results[next(iter(contexts))].pairwise["grpo_vs_base"]["spc"]
    assert (first.first.winner, first.second.winner) == ("A", "B")


def test_an_empty_line_loses_without_asking(http_model, contexts_and_outputs):
    contexts, _ = contexts_and_outputs
    key = next(iter(contexts))
    model = RuleJudge()
    judge = judge_for(http_model, model)
    outs = {key: [SystemOutput("grpo", "<answer>Go.</answer>"), SystemOutput("base", "\n\n")]}
    results = judge_samples(
        judge, {key: contexts[key]}, outs, metrics=["cn"], pairs=[("grpo", "base")]
    )
    assert results[key].pairwise["grpo_vs_base"]["cn"].outcome == "win"
    assert not any(r["pairwise"] for r in model.requests)
