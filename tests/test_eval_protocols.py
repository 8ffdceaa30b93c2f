"""Evaluation as the authors ran it, beside our stricter one (issue 14).

Every judge and system here is a scripted model served over real HTTP by ``ebmrl
serve``'s server on 127.0.0.1 (the ``http_model`` fixture stops it after the test), and
reached through the same OpenAI-compatible client a hosted judge uses. Expected numbers
are worked out by hand in the comments.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import fixture_benchmark, ink, no_external_resources, require_chromium, screenshot

from ebmrl.backends import GenerationClient, RetryPolicy
from ebmrl.backends.openai_http import OpenAIHTTPBackend
from ebmrl.cli import main
from ebmrl.config import DecodingSection
from ebmrl.data.dataset import write_dataset
from ebmrl.demo import profile_book
from ebmrl.eval.frame_samples import clip_judge_frames, judge_frame_indices
from ebmrl.eval.generation import ClipFrames, generate_outputs
from ebmrl.eval.judge import METRICS, Judge, JudgeContext
from ebmrl.eval.outputs import SystemOutput, spoken_line
from ebmrl.eval.pairwise import PairTally, binomial_p_value
from ebmrl.eval.report import render_report
from ebmrl.eval.subset import seeded_subset
from ebmrl.eval.summaries import judge_samples, judge_summary, pairwise_summary
from ebmrl.eval.videoqa.parsing import exact_match, parse_choice
from ebmrl.eval.videoqa.scoring import (
    FrameReader,
    answer_questions,
    summarize,
    videoqa_request,
)
from ebmrl.schema import load_released
from ebmrl.tags import AUTHORS_TAGS, DEFAULT_TAGS

FIXTURES = Path(__file__).parent / "fixtures" / "videoqa"
FRAMES = np.zeros((8, 48, 64, 3), np.uint8)


class ScriptedJudge:
    """A judge model: every candidate ``[X] line`` scores ``min(100, 10 * words)``, except
    a line with "mumble" in it, whose entry it always writes as ``"score": "high"`` (not a
    number: unreadable). Pairwise: the longer line wins, with "high" confidence. Every
    request is recorded: the metric, the frames, the candidate lines, a re-ask or not."""

    max_concurrency = 4

    def __init__(self, name="scripted-judge"):
        self.model_id = name
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    def generate(self, request) -> str:
        user = request.messages[-1].content
        lines = dict(re.findall(r"^\[([A-Z])\] (.*)$", user, flags=re.MULTILINE))
        metric = re.search(r"on (VEG|SPC|CN) \(", user)
        with self._lock:
            self.requests.append(
                {
                    "metric": metric.group(1) if metric else None,
                    "frames": None if request.frames is None else request.frames.shape,
                    "lines": lines,
                    "reask": "could not be used" in user,
                    "problem": (re.findall(r"could not be used: (.*)", user) or [None])[-1],
                    "pairwise": "Two candidate lines" in user,
                }
            )
        if "Two candidate lines" in user:
            a, b = (len(lines[k].split()) for k in ("A", "B"))
            winner = "A" if a > b else "B" if b > a else "tie"
            return json.dumps({"winner": winner, "confidence": "high", "reason": "longer"})
        scores = {
            label: {"score": "high" if "mumble" in line else min(100, 10 * len(line.split()))}
            for label, line in lines.items()
        }
        return json.dumps({"scores": scores})

    def close(self) -> None:
        pass


class RecordingSystem:
    """A role-play system: answers ``reply`` and records what reached it (the system
    prompt, the number of frames, the decoding settings)."""

    max_concurrency = 2

    def __init__(self, reply: str, name="recording"):
        self.model_id = name
        self.reply = reply
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    def generate(self, request) -> str:
        with self._lock:
            self.requests.append(
                {
                    "system": request.messages[0].content,
                    "user": request.messages[-1].content,
                    "frames": 0 if request.frames is None else len(request.frames),
                    "decoding": (request.temperature, request.top_p, request.seed),
                }
            )
        return self.reply

    def close(self) -> None:
        pass


def make_judge(url, protocol, attempts=3):
    backend = OpenAIHTTPBackend(url, "scripted-judge", api_key_env=None, timeout_s=10)
    client = GenerationClient(backend, None, RetryPolicy(max_retries=0, backoff_s=0.01))
    return Judge(client, None, max_attempts=attempts, max_tokens=256, protocol=protocol)


def answered(line: str, tags=DEFAULT_TAGS) -> str:
    p, t, a = tags
    return f"<{p}>fire</{p}><{t}>run</{t}><{a}>{line}</{a}>"


@pytest.fixture(scope="module")
def samples(demo_data):
    return load_released(demo_data["samples"])


# ------------------------------------------------------------ the judge protocols
def test_an_unreadable_score_is_zero_averaged_in_by_authors_and_excluded_by_ours(
    http_model, samples
):
    """Two samples; on the second the judge cannot give base's line a readable score.
    ebmrl: that whole reply is invalid (re-asked, then not scored); authors: grpo keeps
    its 70, base gets 0, averaged in; our average beside it leaves the 0 out."""
    contexts = {
        str(i): JudgeContext.from_sample(s, profile_book(), FRAMES)
        for i, s in enumerate(samples[:2])
    }
    grpo = "Eyes up, everyone, we hold the line."  # 7 words: 70
    outputs = {
        "0": [SystemOutput("grpo", answered(grpo)), SystemOutput("base", answered("Run now."))],
        "1": [SystemOutput("grpo", answered(grpo)), SystemOutput("base", answered("mumble"))],
    }
    results = {}
    for protocol in ("ebmrl", "authors"):
        model = ScriptedJudge()
        judge = make_judge(http_model(model).url, protocol)
        judged = judge_samples(judge, contexts, outputs, metrics=["cn"])
        results[protocol] = (judged, judge_summary(judged, ["grpo", "base"], ["cn"], protocol))
        # The unreadable sample is asked 3 times either way; the first sample once.
        assert len(model.requests) == 4 and sum(r["reask"] for r in model.requests) == 2
        problems = [r["problem"] for r in model.requests if r["reask"]]
        if protocol == "authors":  # the re-ask names only the label still missing
            assert all(re.fullmatch(r"no valid score for \['[AB]'\]", p) for p in problems)
        else:
            assert all(p.startswith("labels: missing") or "schema" in p for p in problems)

    ours, ours_summary = results["ebmrl"]
    assert ours["1"].listwise["cn"].scores == {} and set(ours["1"].listwise["cn"].not_scored) == {
        "grpo",
        "base",
    }
    assert ours["1"].listwise["cn"].not_scored["base"].startswith("invalid JSON after 3 attempt")
    assert ours_summary["grpo"]["cn"] == 70.0 and ours_summary["base"]["cn"] == 20.0
    assert ours_summary["base"]["cn_coverage"] == 0.5 and "authors" not in ours_summary["base"]

    theirs, theirs_summary = results["authors"]
    verdict = theirs["1"].listwise["cn"]
    assert verdict.scores == {"grpo": 70.0} and set(verdict.zeroed) == {"base"}
    assert "no valid score" in verdict.zeroed["base"]
    base, grpo_entry = theirs_summary["base"], theirs_summary["grpo"]
    # Ours, from the same judgements: base's unreadable score is not scored, left out.
    assert (base["cn"], base["cn_scored"], base["cn_not_scored"], base["cn_coverage"]) == (
        20.0,
        1,
        1,
        0.5,
    )
    # The authors': (20 + 0) / 2 = 10; grpo (70 + 70) / 2 = 70.
    assert base["authors"] == {"cn": 10.0, "cn_scored": 2, "cn_zeroed": 1, "mean": 10.0}
    assert grpo_entry["authors"]["cn"] == 70.0 and grpo_entry["cn"] == 70.0


def test_a_reply_with_nothing_readable_drops_the_sample_under_authors_too(http_model, samples):
    """Their script drops a sample whose reply yields no score at all; so do we."""
    context = JudgeContext.from_sample(samples[0], profile_book(), FRAMES)
    judge = make_judge(http_model(ScriptedJudge()).url, "authors", attempts=2)
    result = judge.listwise(
        context,
        METRICS["cn"],
        [SystemOutput("a", answered("mumble")), SystemOutput("b", answered("mumble too"))],
    )
    assert result.scores == {} and result.zeroed == {} and set(result.not_scored) == {"a", "b"}
    assert result.not_scored["a"].startswith("unparseable after 2 attempt(s)")


# ------------------------------------------------------------------ spoken line
@pytest.mark.parametrize("tags", [DEFAULT_TAGS, AUTHORS_TAGS], ids=["perception", "vision"])
@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("<{p}>a hall</{p}><{t}>calm</{t}><{a}> Stay  close. </{a}>", "Stay close."),
        # Case-insensitive tags, an answer never closed: read to the end of the text.
        ("<{p}>x</{p}><THINK>y</THINK><Answer>Hold on, I see", "Hold on, I see"),
        ("<{a}>first</{a}> then <{a}>second</{a}>", "first"),
        # No answer: the text without its think and perception blocks (either name).
        ("<{p}>a hall</{p}><{t}>calm</{t}>So, yes.", "So, yes."),
        ("<vision>v</vision> <perception>p</perception> <Think>t</Think> Go!", "Go!"),
        ("<{t}>only thinking</{t}>", ""),
        ("Plain words, no tags.", "Plain words, no tags."),
        ("stray </{t}> closer and <{p}>unclosed", "stray closer and unclosed"),
    ],
)
def test_the_spoken_line_on_both_tag_sets(tags, text, spoken):
    p, t, a = tags
    assert spoken_line(text.format(p=p, t=t, a=a), tags) == spoken


def test_the_judge_is_sent_the_spoken_line_of_the_tags_in_use(http_model, samples):
    model = ScriptedJudge()
    judge = make_judge(http_model(model).url, "ebmrl")
    context = JudgeContext.from_sample(samples[0], profile_book(), FRAMES)
    outs = [
        SystemOutput(
            "vision", "<vision>v</vision><think>t</think><ANSWER>Up there!", tags=AUTHORS_TAGS
        ),
        SystemOutput("notags", "<vision>v</vision><think>t</think>Look up.", tags=AUTHORS_TAGS),
    ]
    judge.listwise(context, METRICS["veg"], outs)
    (request,) = model.requests
    assert sorted(request["lines"].values()) == ["Look up.", "Up there!"]


# ------------------------------------------------------------- the judge's frames
def test_judge_frames_are_read_from_the_raw_clip(demo_store):
    assert judge_frame_indices(20, 8) == [0, 2, 5, 7, 10, 12, 15, 17]  # int(i * 20 / 8)
    assert judge_frame_indices(16, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert judge_frame_indices(5, 8) == [0, 1, 2, 3, 4]  # a short clip: every frame
    import decord

    clip = demo_store["clips"][0]
    video = decord.VideoReader(clip.uri)
    frames = clip_judge_frames(clip.uri, 8, 512)
    expected = video.get_batch(judge_frame_indices(len(video), 8)).asnumpy()
    assert frames.shape == expected.shape and np.array_equal(frames, expected)  # 128 x 96: kept
    small = clip_judge_frames(clip.uri, 8, 64)
    assert small.shape[1:3] == (48, 64)  # the longer side shrunk to 64


# ------------------------------------------------------------ baselines reach the model
@pytest.mark.parametrize("tags", [DEFAULT_TAGS, AUTHORS_TAGS], ids=["perception", "vision"])
def test_each_baseline_prompt_mode_reaches_the_model(http_model, samples, tags):
    p, t, a = tags
    model = RecordingSystem(answered("Move!", tags))
    server = http_model(model)
    clips = ClipFrames({str(s.clip_id): np.zeros((6, 32, 32, 3), np.uint8) for s in samples}, {})
    backend = OpenAIHTTPBackend(server.url, "recording", api_key_env=None, timeout_s=10)
    client = GenerationClient(backend, None)
    expected = {"ebm": (p, t, a), "cot": (t, a), "vanilla": (a,)}
    for mode, blocks in expected.items():
        model.requests.clear()
        outs = generate_outputs(
            f"base_{mode}",
            client,
            samples[:2],
            clips,
            profile_book(),
            max_tokens=32,
            mode=mode,
            tags=tags,
        )
        assert all(o.ok and o.spoken == "Move!" for o in outs.values())
        assert len(model.requests) == 2
        for request in model.requests:
            for tag in (p, t, a):
                asked = f"<{tag}>" in request["system"] and f"</{tag}>" in request["system"]
                assert asked == (tag in blocks), (mode, tag)
            assert request["frames"] == 6 and request["decoding"] == (0.0, 1.0, 0)
    # A text-only baseline: the clip is withheld, even when the clip itself is missing.
    model.requests.clear()
    gone = ClipFrames({}, {str(s.clip_id): "clip gone" for s in samples})
    sampled = DecodingSection(temperature=0.7, top_p=0.9, seed=3)
    outs = generate_outputs(
        "chat",
        client,
        samples[:2],
        gone,
        profile_book(),
        max_tokens=32,
        mode="vanilla",
        with_frames=False,
        decoding=sampled,
        tags=tags,
    )
    assert all(o.ok for o in outs.values())
    assert [r["frames"] for r in model.requests] == [0, 0]
    assert {r["decoding"] for r in model.requests} == {(0.7, 0.9, 3)}  # seeded sampling


# ----------------------------------------------------------------- pairwise figures
@pytest.mark.parametrize(
    ("wins", "losses", "p"),
    [
        (8, 2, 112 / 1024),  # C(10,k) <= C(10,8)=45 for k in 0,1,2,8,9,10: 1+10+45 twice
        (7, 3, 352 / 1024),  # k in 0..3 and 7..10: (1+10+45+120) * 2
        (10, 0, 2 / 1024),
        (5, 5, 1.0),
        (1, 0, 1.0),
        (3, 9, 598 / 4096),  # C(12,k) <= C(12,3)=220: k 0..3 and 9..12: 2*(1+12+66+220)
    ],
)
def test_exact_two_sided_binomial_p_value(wins, losses, p):
    assert binomial_p_value(wins, losses) == pytest.approx(p, abs=1e-15)
    assert binomial_p_value(losses, wins) == pytest.approx(p, abs=1e-15)


def test_binomial_without_decisive_outcomes_is_none():
    assert binomial_p_value(0, 0) is None
    with pytest.raises(ValueError):
        binomial_p_value(-1, 2)


def test_a_first_order_verdict_whose_second_failed_is_counted_apart():
    tally = PairTally()
    for first, second in [("A", "B")] * 6 + [("B", "A")] * 2 + [("A", "A")]:
        tally.add(first, second, confidences=("high", "low"))
    tally.add("A", None, "judge unavailable: down")  # second order failed
    tally.add(None, None, "judge unavailable: down")
    ours = tally.as_dict(authors=True)
    # Ours: 6 wins, 1 tie (the position flip), 2 losses over 9 pairs.
    assert (ours["win"], ours["tie"], ours["loss"], ours["not_scored"]) == (6, 1, 2, 1)
    assert ours["net_win_rate"] == round(4 / 9, 4) and ours["decisive_win_rate"] == 0.75
    assert ours["p_value"] == round(74 / 256, 6)  # C(8,k) <= 28: k 0..2, 6..8: 2*(1+8+28)/256
    assert ours["first_order_only"] == 1 and ours["first_order_only_win"] == 1
    assert (ours["confidence_high"], ours["confidence_low"]) == (9, 9)
    # The authors' script keeps the first order's verdict: 7 wins over 10 outcomes.
    theirs = ours["authors"]
    assert (theirs["win"], theirs["tie"], theirs["loss"]) == (7, 1, 2)
    assert theirs["net_win_rate"] == 0.5 and theirs["decisive_win_rate"] == round(7 / 9, 4)
    assert theirs["p_value"] == round(binomial_p_value(7, 2), 6)


def test_pairwise_summary_with_confidence_over_http(http_model, samples):
    contexts = {
        str(i): JudgeContext.from_sample(s, profile_book(), FRAMES)
        for i, s in enumerate(samples[:3])
    }
    outputs = {
        key: [
            SystemOutput("grpo", answered("We hold, now.")),
            SystemOutput("base", answered("Go.")),
        ]
        for key in contexts
    }
    judge = make_judge(http_model(ScriptedJudge()).url, "authors")
    judged = judge_samples(judge, contexts, outputs, metrics=["cn"], pairs=[("grpo", "base")])
    tally = pairwise_summary(judged, [("grpo", "base")], ["cn"], "authors")["grpo_vs_base"]["cn"]
    assert (tally["win"], tally["decisive_win_rate"], tally["p_value"]) == (3, 1.0, 0.25)
    assert tally["confidence_high"] == 6 and tally["authors"]["win"] == 3


# ----------------------------------------------------------------------- VideoQA
# The authors' protocol asks with digits; the gold answers of the fixtures are known:
# ActivityNet-QA no yes no yes yes yes, NExT-QA (by qid) C A A D B D -> 2 0 0 3 1 3,
# PororoQA B D C E -> 1 3 2 4.
AUTHORS_SCRIPT = {
    # ActivityNet-QA: exact match lower-cased; with no block, the last yes/no word.
    "clip_0000_1": "<vision>a street</vision><think>no fire</think><answer>no</answer>",  # right
    "clip_0001_1": "<ANSWER> Yes </ANSWER>",  # right (their tags are case-insensitive here)
    "clip_0002_1": "<answer>no.</answer>",  # wrong for them ("no." is not "no"), right for us
    "clip_0003_1": "Yes at first, but no.",  # right for them (last word no)... gold yes: wrong
    "clip_0004_1": "It is yes, or rather no, then yes",  # right: last yes/no word is yes
    "clip_0005_1": "<answer>The answer is yes</answer>",  # wrong for them, right for us
    # NExT-QA: the block must be exactly the digit.
    "9001_0": "<answer>2</answer>",  # right
    "9002_0": "<answer>(0)</answer>",  # wrong for them, right for us
    "9004_0": "<answer> 0 </answer>",  # right (stripped)
    "9000_0": "<Answer>3</Answer>",  # wrong for them (case-sensitive tags), right for us
    "9005_0": "The answer is 1.",  # no block: wrong for them, right for us
    "9003_0": "<answer>4</answer>",  # wrong for both (gold 3)
    # PororoQA
    "lantern_ep1_q1": "<answer>1</answer>",  # right
    "lantern_ep1_q2": "<answer>3</answer>",  # right
    "lantern_ep1_q3": "<answer>2) It is bright.</answer>",  # wrong for them, right for us
    "lantern_ep1_q4": "<answer>0</answer>",  # wrong for both
}


def test_videoqa_authors_exact_match_beside_our_parser(demo_data):
    videos = demo_data["videos"]
    reader = FrameReader(count=4, max_pixels=100_352)
    seen: dict[str, int] = {}

    def scripted(item, frames):
        seen[item.qid] = len(frames)
        return AUTHORS_SCRIPT[item.qid]

    figures = {}
    for name in ("activitynet_qa", "nextqa", "pororoqa"):
        results = answer_questions(
            fixture_benchmark(name, videos),
            "s",
            scripted,
            reader,
            tags=AUTHORS_TAGS,
            protocol="authors",
        )
        figures[name] = summarize(results)
        if name == "nextqa":
            assert {r.qid: r.answer for r in results}["9001_0"] == "2"  # gold as asked: a digit
    anet, nextqa, pororo = (figures[n] for n in ("activitynet_qa", "nextqa", "pororoqa"))
    # ActivityNet-QA, theirs: 0000 0001 0004 right (3 of 6); 0003 says "no" last (gold yes).
    assert anet["authors"] == {"correct": 3, "accuracy": 0.5, "no_answer_block": 2}
    # Ours: 0000 0001 0002 0005 right; 0003 "yes ... no" is a hedge; 0004 too.
    assert (anet["correct"], anet["unparseable"]) == (4, 2)
    # NExT-QA, theirs: 9001 and 9004 (2 of 6); ours: all but 9003 (5 of 6).
    assert nextqa["authors"] == {"correct": 2, "accuracy": round(2 / 6, 6), "no_answer_block": 2}
    assert nextqa["correct"] == 5
    # PororoQA, theirs: q1 q2 (2 of 4); ours: q1 q2 q3.
    assert pororo["authors"]["correct"] == 2 and pororo["correct"] == 3
    # PororoQA under the authors' protocol: two frames of each shot around the supporting
    # one that exists (shots 1, 2, 3 and 5 of the fixture: 8 frames); others: 4 frames.
    assert seen["lantern_ep1_q1"] == 8 and seen["lantern_ep1_q4"] == 8
    assert seen["9001_0"] == 4 and seen["clip_0000_1"] == 4


def test_videoqa_prompts_as_each_protocol_asks(demo_data):
    videos = demo_data["videos"]
    (item,) = [i for i in fixture_benchmark("pororoqa", videos) if i.qid == "lantern_ep1_q2"]
    assert len(item.shots) == 4 and all(Path(s).is_file() for s in item.shots)
    frames = np.zeros((2, 28, 28, 3), np.uint8)
    theirs = videoqa_request(item, frames, 16, AUTHORS_TAGS, "authors")
    system, user = (m.content for m in theirs.messages)
    assert "(0) To the right." in user and "(4) In a circle." in user and "number" in user
    assert "Pororo" in system and "Crong" in system and "<vision>" in system
    ours = videoqa_request(item, frames, 16, DEFAULT_TAGS, "ebmrl")
    system, user = (m.content for m in ours.messages)
    assert "(A) To the right." in user and "letter" in user and "Crong" not in system
    # Our parser reads digits too; the exact match wants the digit alone.
    assert parse_choice("<answer>(3) To the left.</answer>", item.options, labels="01234") == "3"
    assert exact_match("<answer>3</answer>", "3", "choice") == (True, True)
    assert exact_match("<answer>3.</answer>", "3", "choice") == (False, True)


def test_videoqa_subsets_are_seeded(demo_data):
    videos = demo_data["videos"]
    everything = [i.qid for i in fixture_benchmark("nextqa", videos)]
    first = [i.qid for i in fixture_benchmark("nextqa", videos, max_questions=3)]
    assert first == [
        i.qid for i in fixture_benchmark("nextqa", videos, max_questions=3)
    ]  # same each run
    assert len(first) == 3 and first == [q for q in everything if q in first]  # file order
    others = {
        tuple(i.qid for i in fixture_benchmark("nextqa", videos, max_questions=3, seed=s))
        for s in range(8)
    }
    assert len(others) > 1  # the seed decides
    assert seeded_subset(list("abcdef"), 3, 42) == seeded_subset(list("abcdef"), 3, 42)
    assert seeded_subset(list("abc"), None, 1) == list("abc") == seeded_subset(list("abc"), 5, 1)


# ------------------------------------------------------------ the stage, both ways
def stage_params(tmp_path, demo_store, tiny_models, urls, protocol, subset_seed=42):
    return {
        "models": {
            "vlm": str(tiny_models["vlm"]),
            "clip": str(tiny_models["clip"]),
            "text_encoder": str(tiny_models["text_encoder"]),
            "text_encoder_layers": 2,
        },
        "tags": ["vision", "think", "answer"],
        "evaluate": {
            "dataset": str(tmp_path / "dataset"),
            "frames": str(demo_store["frames"]),
            "systems": [
                {"name": "grpo", "base_url": urls["grpo"], "model": "recording"},
                {
                    "name": "base_cot",
                    "base_url": urls["cot"],
                    "model": "recording",
                    "prompt": "cot",
                },
                {
                    "name": "chat",
                    "base_url": urls["chat"],
                    "model": "recording",
                    "prompt": "vanilla",
                    "frames": False,
                },
            ],
            "max_new_tokens": 64,
            "decoding": {"temperature": 0.7, "top_p": 0.9, "seed": 5},
            "cache": str(tmp_path / "eval_cache"),
            "out": str(tmp_path / "reports" / "eval"),
            "metrics": str(tmp_path / "metrics" / "eval.json"),
            "plot_data": str(tmp_path / "metrics" / "eval_plot.json"),
            "automatic": {"bertscore": False, "clipscore": False},
            "judge": {
                "backend": {
                    "kind": "http",
                    "base_url": urls["judge"],
                    "model": "scripted-judge",
                    "max_retries": 0,
                },
                "protocol": protocol,
                "subset": 4 if protocol == "authors" else None,  # null: ebmrl judges all
                "subset_seed": subset_seed,
                "metrics": ["veg", "cn"],
                "max_tokens": 256,
                "max_attempts": 3,
                "serve_local": False,
                "pairwise": {"enabled": True, "pairs": [["grpo", "chat"]]},
            },
        },
        "report": {
            "results": str(tmp_path / "reports" / "eval" / "results.json"),
            "frames": str(demo_store["frames"]),
            "frames_per_sample": 2,
            "videoqa_metrics": None,
            "training_log": None,
            "out": str(tmp_path / "reports" / "eval" / "index.html"),
        },
    }


@pytest.fixture
def stage(tmp_path, demo_store, tiny_models, http_model):
    """6 test samples; three scripted systems over HTTP and the scripted judge."""
    samples = demo_store["result"].samples[:6]
    write_dataset(tmp_path / "dataset", {"train": [], "test": samples}, profile_book())
    systems = {
        "grpo": RecordingSystem(answered("Eyes up, everyone, we hold the line.", AUTHORS_TAGS)),
        "cot": RecordingSystem("<think>danger</think><answer>Back, now!</answer>"),
        "chat": RecordingSystem("<answer>mumble</answer>"),  # the judge cannot score it
    }
    judge = ScriptedJudge()
    urls = {name: http_model(model).url for name, model in systems.items()}
    urls["judge"] = http_model(judge).url

    def run(protocol, subset_seed=42, tracking=False):
        params = stage_params(tmp_path, demo_store, tiny_models, urls, protocol, subset_seed)
        path = tmp_path / f"params_{protocol}_{subset_seed}.yaml"
        path.write_text(yaml.safe_dump(params))
        args = ["--params", str(path), "evaluate"] + ([] if tracking else ["--no-tracking"])
        assert main(args) == 0
        assert main(["--params", str(path), "report", "--no-tracking"]) == 0
        results = json.loads((tmp_path / "reports" / "eval" / "results.json").read_text())
        metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
        return results, metrics

    return tmp_path, systems, judge, run


@pytest.mark.slow
def test_the_stage_reports_both_protocols_side_by_side(stage, monkeypatch):
    root, systems, judge, run = stage
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "protocols")
    monkeypatch.delenv("EBMRL_PARENT_RUN_ID", raising=False)
    results, metrics = run("authors", tracking=True)
    # Each system got its prompt mode, and the clip or not, with the seeded sampling.
    for name, blocks, frames in (
        ("grpo", ("vision", "think", "answer"), True),
        ("cot", ("think", "answer"), True),
        ("chat", ("answer",), False),
    ):
        requests = systems[name].requests
        assert len(requests) == 6
        for request in requests:
            for tag in ("vision", "think", "answer"):
                assert (f"<{tag}>" in request["system"]) == (tag in blocks), (name, tag)
            assert (request["frames"] > 0) == frames
            assert request["decoding"] == (0.7, 0.9, 5)
    # The judge saw a seeded subset of 4 of the 6 samples, with 8 raw-clip frames for VEG.
    assert len(results["judged"]) == 4 and metrics["judged_samples"] == 4
    veg = [r for r in judge.requests if r["metric"] == "VEG" and not r["pairwise"]]
    assert {r["frames"][0] for r in veg} == {8} and {r["frames"][1:3] for r in veg} == {(96, 128)}
    judged = {s["key"]: s for s in results["samples"] if s["judged"]}
    assert set(judged) == set(results["judged"])
    # grpo: 7 words = 70 on both metrics; base_cot: "Back, now!" = 20; chat: unreadable.
    grpo, cot, chat = (metrics["systems"][s]["judge"] for s in ("grpo", "base_cot", "chat"))
    assert (grpo["veg"], grpo["authors"]["veg"], cot["cn"], cot["authors"]["cn"]) == (
        70,
        70,
        20,
        20,
    )
    assert "veg" not in chat and chat["veg_not_scored"] == 4 and chat["veg_coverage"] == 0.0
    assert chat["authors"] == {
        "veg": 0.0,
        "veg_scored": 4,
        "veg_zeroed": 4,
        "cn": 0.0,
        "cn_scored": 4,
        "cn_zeroed": 4,
        "mean": 0.0,
    }
    assert grpo["authors"]["mean"] == 70.0 and cot["mean"] == 20.0
    pair = metrics["pairwise"]["grpo_vs_chat"]["cn"]
    assert (pair["win"], pair["p_value"], pair["authors"]["win"]) == (4, 0.125, 4)  # 2/16
    # The MLflow run carries both, told apart by their keys, and the protocol as a tag.
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("protocols").experiment_id])
    logged = mlflow_run.data.metrics
    assert logged["systems/chat/judge/authors/veg"] == 0.0
    assert logged["systems/chat/judge/veg_coverage"] == 0.0
    assert logged["systems/grpo/judge/veg"] == 70.0
    assert logged["pairwise/grpo_vs_chat/cn/authors/win"] == 4.0
    assert mlflow_run.data.tags["ebmrl.judge_protocol"] == "authors"
    assert mlflow_run.data.params["evaluate.judge.protocol"] == "authors"

    # The same seed draws the same subset on a rerun; another seed another one.
    again, _ = run("authors")
    assert again["judged"] == results["judged"]
    other, _ = run("authors", subset_seed=7)
    assert len(other["judged"]) == 4 and other["judged"] != results["judged"]
    # Ours alone: no authors' figures, and every sample judged.
    ours, ours_metrics = run("ebmrl")
    assert len(ours["judged"]) == 6 and "authors" not in ours_metrics["systems"]["chat"]["judge"]

    # The report: every judge number in the summary says which protocol produced it.
    page = root / "reports" / "eval" / "index.html"
    run("authors")
    html = page.read_text()
    assert no_external_resources(html) == [] and "id='protocols'" in html
    dom = rendered_dom(page, root / "chromium-dom")
    summary = re.search(r"<table id=\"summary\">.*?</table>", dom, re.S).group(0)
    cells = re.findall(r"<td([^>]*)>", summary)
    judge_cells = [c for c in cells if "data-protocol" in c]
    # 3 systems x (VEG, CN, mean) under each protocol.
    assert sum('data-protocol="ebmrl"' in c for c in judge_cells) == 9
    assert sum('data-protocol="authors"' in c for c in judge_cells) == 9
    pairwise = re.search(r"<table id=\"pairwise\">.*?</table>", dom, re.S).group(0)
    assert 'data-protocol="authors"' in pairwise and 'data-protocol="ebmrl"' in pairwise
    png = root / "protocols.png"
    screenshot(page, png, root / "chromium-shot", height=1400)
    share, spread = ink(png)
    assert share > 0.05 and spread > 20, (share, spread)
    # Both protocol colours are on screen (the badges and the cell borders).
    assert colour_share(png, (37, 99, 235)) > 5e-4 and colour_share(png, (217, 119, 6)) > 5e-4


def rendered_dom(page: Path, profile: Path) -> str:
    """The page's DOM as headless Chromium built it."""
    out = subprocess.run(
        [
            require_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout


def colour_share(png: Path, rgb: tuple[int, int, int], tolerance: int = 12) -> float:
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    close = np.all(np.abs(pixels - np.array(rgb, np.int16)) <= tolerance, axis=-1)
    return float(close.mean())


@pytest.mark.slow
def test_the_report_without_the_authors_protocol_has_no_authors_numbers(tmp_path):
    data = {
        "title": "t",
        "systems": ["grpo"],
        "judge_metrics": ["cn"],
        "judge": {"grpo": {"cn": 50.0, "cn_scored": 1, "cn_not_scored": 0, "mean": 50.0}},
        "auto": {},
        "samples": [],
    }
    html = render_report(data)
    assert "data-protocol='ebmrl'" in html and "data-protocol='authors'" not in html
    page = tmp_path / "index.html"
    page.write_text(html)
    png = tmp_path / "p.png"
    screenshot(page, png, tmp_path / "profile", height=600)
    assert colour_share(png, (37, 99, 235)) > 1e-4 and colour_share(png, (217, 119, 6)) == 0.0


def test_protocol_settings_are_checked_before_any_work():
    from ebmrl.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"evaluate.systems\[0\].prompt"):
        validate({"evaluate": {"systems": [{"name": "b", "prompt": "chat"}]}})
    with pytest.raises(ConfigError, match=r"evaluate.judge.protocol"):
        validate({"evaluate": {"judge": {"protocol": "paper"}}})
    with pytest.raises(ConfigError, match="VideoQA asks with the three-block prompt"):
        validate({"videoqa": {"systems": [{"name": "b", "prompt": "cot"}]}})
    params = validate({"evaluate": {"judge": {"protocol": "authors"}}})
    assert params.evaluate.judge.subset_size() == 100  # the authors' default
    assert validate({}).evaluate.judge.subset_size() is None  # ours: every sample
    assert validate({"evaluate": {"judge": {"subset": 7}}}).evaluate.judge.subset_size() == 7
