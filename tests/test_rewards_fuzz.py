"""Any completion string gives a finite float from every reward (hypothesis + explicit cases)."""

import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ebmrl import video
from ebmrl.frame_store import MemoryFrameStore
from ebmrl.models import load_vlm
from ebmrl.models.vlm import video_messages
from ebmrl.rewards.answer import AnswerReward, make_bert_scorer
from ebmrl.rewards.clip import ClipReward, OpenClipEncoder
from ebmrl.rewards.embed import HFSentenceEmbedder
from ebmrl.rewards.format import FormatReward
from ebmrl.rewards.leak import LeakFilter
from ebmrl.rewards.likelihood import VideoLikelihoodScorer
from ebmrl.rewards.pcg import PerceptualCognitiveReward

CLIP = "clip0"
REF = "Fire on the ground, get back now."


@pytest.fixture(scope="module")
def rewards(tiny_models, demo_data):
    encoder = OpenClipEncoder.load(str(tiny_models["clip"]))
    store = MemoryFrameStore()
    frames, _, _ = video.sample_frames(sorted(demo_data["videos"].glob("*.mp4"))[0])
    store.add(CLIP, frames=frames, embeddings=encoder.encode_frames(frames))
    model, processor = load_vlm(tiny_models["vlm"])
    leak = LeakFilter(HFSentenceEmbedder.load(str(tiny_models["text_encoder"])), threshold=0.9)
    return {
        "format": FormatReward(),
        "answer": AnswerReward(make_bert_scorer(str(tiny_models["text_encoder"]), 2)),
        "clip": ClipReward(encoder, store, mode="max"),
        "clip_sent": ClipReward(encoder, store, mode="sent_topk"),
        "pcg": PerceptualCognitiveReward(
            VideoLikelihoodScorer(model, processor, store), leak_filter=leak
        ),
    }


def score_all(rewards, completions):
    n = len(completions)
    batches = {
        "format": rewards["format"].score(completions),
        "answer": rewards["answer"].score(completions, [REF] * n),
        "clip": rewards["clip"].score(completions, [CLIP] * n),
        "clip_sent": rewards["clip_sent"].score(completions, [CLIP] * n),
        "pcg": rewards["pcg"].score(
            completions, [video_messages("What now?")] * n, [CLIP] * n, [REF] * n, ["p0"] * n
        ),
    }
    for name, batch in batches.items():
        assert len(batch.values) == n, name
        for value in batch.values:
            assert type(value) is float and math.isfinite(value), (name, value)
        assert all(math.isfinite(m) for m in batch.metrics.values()), name
    return batches


PIECES = [
    "<perception>",
    "</perception>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<vision>",
    "<",
    ">",
    "/",
    "Fire on the ground.",
    "火が見える。",
    "Огонь!",
    "🔥",
    "\x00",
    "\ufffd",
    "\n",
    " ",
    ".",
]
tag_soup = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)
junk = st.binary(max_size=200).map(lambda b: b.decode("utf-8", errors="replace"))
well_formed_around = st.tuples(
    st.text(max_size=60), st.text(max_size=60), st.text(max_size=60)
).map(lambda t: f"<perception>{t[0]}</perception><think>{t[1]}</think><answer>{t[2]}</answer>")
completion = st.one_of(st.text(max_size=200), junk, tag_soup, well_formed_around)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(completion, min_size=1, max_size=3))
@example(["", "<perception></perception><think></think><answer></answer>"])
@example(["<perception>a<perception>b</perception><think>t</think><answer>x"])
@example(["<answer>" * 50 + "</answer>" * 50])
@pytest.mark.slow
def test_every_reward_is_finite_on_any_text(rewards, completions):
    score_all(rewards, completions)


MEGABYTE = 1_000_000
EXPLICIT = {
    "empty": "",
    "1 MB plain": "word " * (MEGABYTE // 5),
    "1 MB in every block": "<perception>"
    + "a. " * (MEGABYTE // 9)
    + "</perception><think>"
    + "b! " * (MEGABYTE // 9)
    + "</think><answer>"
    + "c " * (MEGABYTE // 6)
    + "</answer>",
    "binary junk": bytes(range(256)).decode("latin-1") * 100,
    "raw bytes": b"<perception>\xff\xfe</perception><think>\x00</think><answer>\x80</answer>",
    "unclosed": "<perception>two figures<think>danger<answer>run",
    "repeated": "<perception>a</perception>" * 3
    + "<think>b</think>" * 3
    + "<answer>c</answer>" * 3,
    "other languages": "<perception>两个人在街上走。</perception><think>危险！</think>"
    "<answer>بسرعة، ارجعوا الآن</answer>",
    "whitespace blocks": "<perception>\n\t </perception><think>\u3000</think><answer>\u200b</answer>",
    "chat messages": [{"role": "assistant", "content": "<answer>Run!</answer>"}],
    "none": None,
}


@pytest.mark.parametrize("name", list(EXPLICIT))
@pytest.mark.slow
def test_explicit_bad_inputs_are_finite(rewards, name):
    score_all(
        rewards, [EXPLICIT[name], "<perception>x</perception><think>y</think><answer>z</answer>"]
    )


@pytest.mark.slow
def test_a_megabyte_perception_is_reported_as_truncated(rewards):
    batches = score_all(rewards, [EXPLICIT["1 MB in every block"]])
    assert batches["clip"].metrics["rewards/clip/truncation_rate"] == 1.0
    assert batches["pcg"].metrics["rewards/pcg/truncation_rate"] == 1.0
