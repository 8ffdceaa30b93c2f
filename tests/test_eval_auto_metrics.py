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
        **{
            k: None
            for k in (
                "bertscore_f1",
                "rouge_l",
                "clipscore",
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
