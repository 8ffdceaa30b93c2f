"""The VEG/SPC/CN judge: strict replies, re-asks, failures recorded, caching, frames.

Judges here are deterministic models served over real HTTP (``ebmrl.edge.http_server.ChatServer``
on 127.0.0.1), reached through the same ``OpenAIHTTPBackend`` a hosted judge uses.
"""

import numpy as np
import pytest
from conftest import RuleJudge

from ebmrl.backends import GenerationClient, ResponseCache, RetryPolicy
from ebmrl.backends.openai_http import OpenAIHTTPBackend
from ebmrl.demo import profile_book
from ebmrl.eval.judge import (
    METRICS,
    Judge,
    JudgeContext,
    JudgeReplyError,
    labels,
    parse_json_object,
    rubric_version,
    shuffled,
    validate_listwise,
    validate_pairwise,
)
from ebmrl.eval.outputs import SystemOutput
from ebmrl.schema import load_released

FRAMES = np.zeros((8, 48, 64, 3), np.uint8)


@pytest.fixture(scope="module")
def sample(demo_data):
    return load_released(demo_data["samples"])[3]


def make_judge(url, tmp_path=None, *, attempts=3, retries=0, model="judge"):
    backend = OpenAIHTTPBackend(url, model, api_key_env=None, timeout_s=10)
    client = GenerationClient(backend, None, RetryPolicy(max_retries=retries, backoff_s=0.01))
    cache = ResponseCache(tmp_path / "judgements.jsonl") if tmp_path else None
    return Judge(client, cache, max_attempts=attempts, max_tokens=256)


def outputs(**lines):
    return [
        SystemOutput(name, f"<perception>p</perception><think>t</think><answer>{line}</answer>")
        for name, line in lines.items()
    ]


# ----------------------------------------------------------------- reply checking
@pytest.mark.parametrize(
    "reply",
    [
        '{"scores": {"A": {"score": 80, "reason": "ok"}, "B": {"score": 12.5}}}',
        '```json\n{"scores": {"A": {"score": 80}, "B": {"score": 0}}}\n```',
        '  {"scores": {"B": {"score": 100, "reason": ""}, "A": {"score": 3}}}  ',
    ],
)
def test_valid_listwise_replies(reply):
    scores = validate_listwise(reply, ["A", "B"])
    assert set(scores) == {"A", "B"}


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("Candidate A is better.", "not JSON"),
        ('Sure! {"scores": {"A": {"score": 1}, "B": {"score": 2}}}', "not JSON"),
        ("", "empty"),
        ("[1, 2]", "JSON object"),
        ('{"scores": {"A": {"score": 80}}}', "missing ['B']"),
        ('{"scores": {"A": {"score": 1}, "B": {"score": 2}, "C": {"score": 3}}}', "unknown ['C']"),
        ('{"scores": {"A": {"score": 101}, "B": {"score": 2}}}', "less than or equal"),
        ('{"scores": {"A": {"score": "80"}, "B": {"score": 2}}}', "schema"),
        ('{"scores": {"A": {"score": true}, "B": {"score": 2}}}', "schema"),
        ('{"scores": {"A": {"score": 5, "mood": "x"}, "B": {"score": 2}}}', "schema"),
        ('{"score": 5}', "schema"),
    ],
)
def test_invalid_listwise_replies_name_the_problem(reply, problem):
    with pytest.raises(JudgeReplyError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        validate_listwise(reply, ["A", "B"])


def test_pairwise_reply_schema():
    assert validate_pairwise('{"winner": "tie", "reason": "same"}').winner == "tie"
    for bad in ('{"winner": "C"}', '{"winner": "a"}', "B is better", '{"verdict": "A"}'):
        with pytest.raises(JudgeReplyError):
            validate_pairwise(bad)
    with pytest.raises(JudgeReplyError, match="not JSON"):
        parse_json_object("{'winner': 'A'}")


def test_label_shuffle_is_seeded_and_varies_across_samples():
    systems = ["base", "sft", "grpo"]
    first = shuffled(systems, "0", "s1", "veg")
    assert first == shuffled(systems, "0", "s1", "veg") and sorted(first) == sorted(systems)
    orders = {tuple(shuffled(systems, "0", f"s{i}", "veg")) for i in range(40)}
    assert len(orders) == 6  # every position is taken by every system somewhere
    assert labels(3) == ["A", "B", "C"]
    assert len(rubric_version()) == 12


def test_context_text_has_profiles_history_reference_and_the_rubric(sample):
    context = JudgeContext.from_sample(sample, profile_book(), FRAMES)
    veg, cn = context.text(METRICS["veg"]), context.text(METRICS["cn"])
    assert sample.target.utterance.split()[0] in veg
    assert "Personality:" in veg and sample.dialogue[-1].utterance in veg
    assert "50%" in veg and "0-20" in veg and "81-100" in veg
    assert "8 images are frames" in veg and "do not see the clip" in cn
    assert "60%" in cn and "no narrator" in cn.lower()


# -------------------------------------------------------------- judging over HTTP
def test_listwise_scores_by_rule_over_http_with_frames_only_for_veg_and_spc(
    http_model, sample, tmp_path
):
    model = RuleJudge()
    server = http_model(model)
    judge = make_judge(server.url, tmp_path)
    context = JudgeContext.from_sample(sample, profile_book(), FRAMES)
    outs = outputs(base="Run.", sft="Eyes up, everyone.", grpo="Talk later, move now, hold it.")
    for key in ("veg", "spc", "cn"):
        result = judge.listwise(context, METRICS[key], outs)
        # 10 points per word whatever label each system drew: shuffling cannot leak.
        assert result.scores == {"base": 10.0, "sft": 30.0, "grpo": 60.0}
        assert sorted(result.labels.values()) == ["base", "grpo", "sft"] and not result.not_scored
    assert [(r["metric"], r["frames"]) for r in model.requests] == [
        ("VEG", 8),
        ("SPC", 8),
        ("CN", 0),
    ]
    # Cached by (sample, outputs, judge model, rubric): asking again costs no request ...
    again = judge.listwise(context, METRICS["veg"], outs)
    assert again.cached and again.scores["grpo"] == 60.0 and len(model.requests) == 3
    # ... and a changed output is judged anew.
    changed = outputs(
        base="Run now.", sft="Eyes up, everyone.", grpo="Talk later, move now, hold it."
    )
    assert judge.listwise(context, METRICS["veg"], changed).scores["base"] == 20.0
    assert len(model.requests) == 4


def test_the_cache_survives_a_new_judge_and_is_keyed_by_the_judge_model(
    http_model, sample, tmp_path
):
    context = JudgeContext.from_sample(sample, profile_book(), FRAMES)
    outs = outputs(base="One two.", grpo="One.")
    first = RuleJudge()
    judge = make_judge(http_model(first).url, tmp_path)
    judge.listwise(context, METRICS["cn"], outs)
    judge.cache.close()
    second = RuleJudge(first_label=True, name="other-judge")
    other = make_judge(http_model(second).url, tmp_path, model="other-judge")
    assert other.listwise(context, METRICS["cn"], outs).cached is False
    assert len(second.requests) == 1
    other.cache.close()
    rerun = make_judge(http_model(RuleJudge()).url, tmp_path)
    assert rerun.listwise(context, METRICS["cn"], outs).cached is True


def test_prose_is_reasked_then_recorded_as_not_scored_never_invented(http_model, sample):
    model = RuleJudge(prose=True)
    judge = make_judge(http_model(model).url, attempts=3)
    context = JudgeContext.from_sample(sample, profile_book(), FRAMES)
    result = judge.listwise(context, METRICS["spc"], outputs(base="Hello there.", grpo="Go!"))
    assert result.scores == {}
    assert set(result.not_scored) == {"base", "grpo"}
    assert all(
        why.startswith("invalid JSON after 3 attempt(s): not JSON")
        for why in result.not_scored.values()
    )
    assert [r["reask"] for r in model.requests] == [False, True, True]
    assert judge.stats["invalid_replies"] == 3 and judge.stats["failed"] == 1


def test_a_reask_that_gets_json_is_scored(http_model, sample):
    model = RuleJudge(prose_first=True)
    judge = make_judge(http_model(model).url, attempts=2)
    context = JudgeContext.from_sample(sample, profile_book(), FRAMES)
    result = judge.listwise(context, METRICS["cn"], outputs(base="Hello there."))
    assert result.scores == {"base": 20.0} and result.attempts == 2


def test_judge_endpoint_down_is_recorded(sample):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = make_judge(f"http://127.0.0.1:{port}/v1", retries=1)
    context = JudgeContext.from_sample(sample, profile_book(), FRAMES)
    result = judge.listwise(context, METRICS["cn"], outputs(base="Hello."))
    assert result.scores == {}
    assert result.not_scored["base"].startswith("judge unavailable:")
    assert "connection failed" in result.not_scored["base"]


def test_empty_lines_score_zero_unasked_and_failed_outputs_are_not_scored(http_model, sample):
    model = RuleJudge()
    judge = make_judge(http_model(model).url)
    context = JudgeContext.from_sample(sample, profile_book(), FRAMES)
    outs = [
        SystemOutput("base", "\n\n\n"),
        SystemOutput("sft", "<think>only</think>"),
        SystemOutput("grpo", error="generation failed: no model"),
    ]
    result = judge.listwise(context, METRICS["veg"], outs)
    assert result.scores == {"base": 0.0, "sft": 0.0}
    assert result.not_scored == {"grpo": "no output: generation failed: no model"}
    assert model.requests == []
    # No frames for a visual metric: not scored (CN still is).
    blind = JudgeContext.from_sample(sample, profile_book(), None)
    assert (
        judge.listwise(blind, METRICS["veg"], outputs(base="Hi."))
        .not_scored["base"]
        .startswith("no frames")
    )
    assert judge.listwise(blind, METRICS["cn"], outputs(base="Hi.")).scores == {"base": 10.0}


@pytest.mark.parametrize("source", ["keep", None, "an unknown film"])
def test_the_judge_sees_the_character_sheets_the_policy_was_prompted_with(sample, source):
    """One lookup for both: with the sample's film, without one (the sheets are then
    found in whichever film has the name, for the policy as for the judge), or with a
    film the book does not know (both see the same "no profile" note)."""
    from ebmrl.prompts.conversation import build_prompt

    book = profile_book()
    if source != "keep":
        sample = sample.model_copy(update={"source": source})
    policy_text = build_prompt(sample, book)[1]["content"][1]["text"]
    context = JudgeContext.from_sample(sample, book, FRAMES)
    assert context.assistant_profile in policy_text and context.user_profile in policy_text
    if source != "an unknown film":
        assert "no profile on record" not in context.assistant_profile
        assert book.get(sample.assistant).describe() == context.assistant_profile
