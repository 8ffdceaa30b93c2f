"""Automatic metrics per output and per system, with the real tiny BERTScore and CLIP."""

import numpy as np
import pytest

from ebmrl.eval.auto_metrics import AutoItem, clip_score, score_outputs, summarize
from ebmrl.eval.outputs import SystemOutput
from ebmrl.frame_store import MemoryFrameStore
from ebmrl.rewards.answer import make_bert_scorer
from ebmrl.rewards.clip import OpenClipEncoder

REFERENCE = "Eyes up, everyone. We hold the line."
PERFECT = (
    "<perception>Two figures walk in a dim street.</perception>\n<think>Calm scene.</think>\n"
    f"<answer>{REFERENCE}</answer>"
)


@pytest.fixture(scope="module")
def scorers(tiny_models):
    bert = make_bert_scorer(str(tiny_models["text_encoder"]), 2)
    clip = OpenClipEncoder.load(str(tiny_models["clip"]))
    return bert, clip


@pytest.fixture(scope="module")
def store(scorers):
    _, clip = scorers
    store = MemoryFrameStore()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    store.add("clip-1", frames, clip.encode_frames(frames))
    return store


def test_clip_score_is_hessel_weighted_mean_cosine():
    frames = np.array([[1.0, 0.0], [0.0, 1.0]])
    # cosines 1 and 0: mean 0.5, times 2.5
    assert clip_score(np.array([2.0, 0.0]), frames) == pytest.approx(1.25)
    assert clip_score(np.array([-1.0, 0.0]), frames) == 0.0  # negative similarity clips to 0
    with pytest.raises(ValueError):
        clip_score(np.ones(3), frames)


@pytest.mark.slow
def test_per_output_metrics(scorers, store):
    bert, clip = scorers
    items = [
        AutoItem(SystemOutput("grpo", PERFECT), REFERENCE, "clip-1"),
        AutoItem(SystemOutput("sft", "We hold the line, maybe."), REFERENCE, "clip-1"),
        AutoItem(SystemOutput("base", "\n\n"), REFERENCE, "clip-1"),
        AutoItem(SystemOutput("lost", "<perception>x</perception>"), REFERENCE, "missing-clip"),
        AutoItem(SystemOutput("none", error="no model"), REFERENCE, "clip-1"),
    ]
    rows = score_outputs(items, bert=bert, clip=clip, frame_embeddings=store.embeddings)
    perfect, loose, empty, lost, failed = rows
    assert perfect["bertscore_f1"] == pytest.approx(1.0, abs=1e-5)  # identical to the reference
    assert (
        perfect["rouge_l"] == 1.0 and perfect["format_ok"] == 1.0 and perfect["format_score"] == 5.0
    )
    assert perfect["answer_words"] == 7 and perfect["has_answer"] == 1.0
    assert 0 <= perfect["clipscore"] <= 2.5 and perfect["clip_truncated"] == 0.0
    # The CLIP reward (best frame) is never below the mean frame cosine CLIPScore rescales.
    assert perfect["clip_reward"] >= perfect["clipscore"] / 2.5 - 1e-6
    assert "perception_accuracy" not in perfect  # no ground truth for this clip: no value
    assert perfect["distinct_1"] == pytest.approx(1.0)
    assert 0 < loose["rouge_l"] < 1 and loose["has_answer"] == 0.0 and loose["format_ok"] == 0.0
    assert 0 < loose["bertscore_f1"] < 1 and loose["clipscore"] == 0.0  # no perception
    assert empty["bertscore_f1"] == 0.0 and empty["answer_words"] == 0.0
    assert lost["clipscore"] is None  # the clip's frames are missing: not computed, not 0
    assert failed == {}
    summary = summarize(items, rows)
    assert summary["grpo"]["format_ok"] == 1.0 and summary["grpo"]["scored"] == 1
    assert summary["lost"]["clipscore"] is None
    assert summary["none"] == {
        "outputs": 1,
        "scored": 0,
        "perception_scored": 0,
        "perception_by_attribute": {},
        **{
            k: None
            for k in (
                "bertscore_f1",
                "rouge_l",
                "clipscore",
                "clip_reward",
                "perception_accuracy",
                "perception_hallucinated",
                "format_ok",
                "format_score",
                "answer_words",
                "has_answer",
                "distinct_1",
                "distinct_2",
            )
        },
    }


def test_system_summary_pools_distinct_n_over_the_lines():
    items = [
        AutoItem(SystemOutput("a", "<answer>go go now</answer>"), "x", "c"),
        AutoItem(SystemOutput("a", "<answer>go now</answer>"), "x", "c"),
    ]
    summary = summarize(items, score_outputs(items))
    # unigrams go go now go now: 2 distinct of 5; bigrams (go go)(go now)(go now): 2 of 3
    assert summary["a"]["distinct_1"] == pytest.approx(0.4)
    assert summary["a"]["distinct_2"] == pytest.approx(2 / 3)
    assert summary["a"]["answer_words"] == 2.5 and summary["a"]["bertscore_f1"] is None


def test_perception_accuracy_only_where_the_scene_is_known():
    truth = {"background": "blue", "lighting": "dim", "figures": 2, "figure_colour": "white",
             "motion": "left", "danger": False}  # fmt: skip
    right = "<perception>Two pale silhouettes heading left on a gloomy cobalt lane.</perception>"
    wrong = "<perception>Three white figures in a bright red street, flames rising.</perception>"
    items = [
        AutoItem(SystemOutput("grpo", right), REFERENCE, "c", truth),
        AutoItem(SystemOutput("sft", wrong), REFERENCE, "c", truth),
        AutoItem(SystemOutput("base", "<answer>hi</answer>"), REFERENCE, "c", truth),
        AutoItem(SystemOutput("base", right), REFERENCE, "c", None),  # no ground truth
    ]
    rows = score_outputs(items)
    # Five of six attributes stated, all correctly (danger is not mentioned).
    assert rows[0]["perception_accuracy"] == pytest.approx(5 / 6, abs=1e-6)
    assert rows[0]["perception_hallucinated"] == 0.0
    assert rows[0]["perception_attributes"]["danger"] == "unstated"
    # figure colour right; count, background, lighting and danger wrong; motion unstated.
    assert rows[1]["perception_accuracy"] == pytest.approx(1 / 6, abs=1e-6)
    assert rows[1]["perception_hallucinated"] == pytest.approx(4 / 6, abs=1e-6)
    assert rows[2]["perception_accuracy"] == 0.0 and rows[2]["perception_hallucinated"] == 0.0
    assert "perception_accuracy" not in rows[3]
    summary = summarize(items, rows)
    assert summary["base"]["perception_scored"] == 1  # the clip without ground truth is out
    assert summary["base"]["perception_accuracy"] == 0.0
    assert summary["grpo"]["perception_by_attribute"]["motion"] == {"correct": 1.0, "wrong": 0.0}
