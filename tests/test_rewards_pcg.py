"""PCG reward: baseline once per prompt, batching, leak filter, and the VLM scorer."""

import math
import re

import numpy as np
import pytest

from ebmrl import video
from ebmrl.frame_store import MemoryFrameStore, MissingClipError
from ebmrl.models import load_vlm
from ebmrl.models.vlm import video_messages
from ebmrl.rewards.embed import HFSentenceEmbedder
from ebmrl.rewards.leak import LeakFilter
from ebmrl.rewards.likelihood import VideoLikelihoodScorer, clean_conversation, middle_cut
from ebmrl.rewards.pcg import (
    BASELINE_PREFIX,
    LikelihoodQuery,
    PerceptualCognitiveReward,
    trace_prefix,
)

REF = "get back now"


def words(text):
    return re.findall(r"[a-z]+", text.lower())


class WordRecallScorer:
    """A transparent LikelihoodScorer: minus the share of target words absent from the prefix.

    Mirrors what PCG measures (a prefix that "explains" the target scores higher) with
    values that are easy to compute by hand; records every query it is asked.
    """

    def __init__(self):
        self.calls = []

    def mean_logprob(self, queries):
        self.calls.append(list(queries))
        out = []
        for q in queries:
            target = words(q.target)
            if not target:
                out.append(math.nan)
                continue
            present = set(words(q.prefix))
            out.append(-sum(w not in present for w in target) / len(target))
        return out


def completion(perception, think, answer="a"):
    return f"<perception>{perception}</perception><think>{think}</think><answer>{answer}</answer>"


def score(reward, completions, prompt_id="p0", reference=REF, clip_id="c0"):
    n = len(completions)
    return reward.score(
        completions, ["prompt"] * n, [clip_id] * n, [reference] * n, [prompt_id] * n
    )


def test_gain_over_the_baseline_hand_computed():
    scorer = WordRecallScorer()
    reward = PerceptualCognitiveReward(scorer)
    completions = [
        completion("fire", "we should get back"),  # 2 of 3 words: -1/3 vs baseline -1 -> 2/3
        completion("figures run back", "now"),  # 2 of 3 -> 2/3
        completion("a street", "calm"),  # 0 of 3 -> 0
        completion("get back now", "yes"),  # 3 of 3 -> 1
        "<think>no perception</think><answer>get back now</answer>",  # missing -> 0
        completion("fire", "   "),  # empty think -> 0
    ]
    batch = score(reward, completions)
    assert batch.values == pytest.approx([2 / 3, 2 / 3, 0.0, 1.0, 0.0, 0.0])
    # One scorer call: the baseline once, then the four scorable traces.
    assert len(scorer.calls) == 1
    queries = scorer.calls[0]
    assert [q.prefix for q in queries] == [
        BASELINE_PREFIX,
        trace_prefix("fire", "we should get back"),
        trace_prefix("figures run back", "now"),
        trace_prefix("a street", "calm"),
        trace_prefix("get back now", "yes"),
    ]
    assert {(q.prompt, q.clip_id, q.target) for q in queries} == {("prompt", "c0", REF)}
    assert batch.metrics["rewards/pcg/missing_rate"] == pytest.approx(2 / 6)
    assert batch.metrics["rewards/pcg/baseline_queries"] == 1.0
    assert "rewards/pcg/leak_removal_rate" not in batch.metrics  # no filter configured


def test_trace_prefix_layout():
    assert trace_prefix("P", "T") == "<perception>P</perception>\n<think>T</think>\n<answer>"


def test_baseline_is_cached_per_prompt_id_across_calls():
    scorer = WordRecallScorer()
    reward = PerceptualCognitiveReward(scorer)
    score(reward, [completion("get", "back")])
    second = score(reward, [completion("now", "x"), completion("get back now", "x")])
    assert [q.prefix == BASELINE_PREFIX for q in scorer.calls[1]] == [False, False]
    assert second.values == pytest.approx([1 / 3, 1.0])
    assert second.metrics["rewards/pcg/baseline_queries"] == 0.0
    reward.clear_baseline_cache()
    score(reward, [completion("get", "back")])
    assert scorer.calls[2][0].prefix == BASELINE_PREFIX


def test_two_prompts_in_one_batch_get_one_baseline_each():
    scorer = WordRecallScorer()
    reward = PerceptualCognitiveReward(scorer)
    completions = [completion("get", "x"), completion("back", "x"), completion("run", "x")] * 2
    batch = reward.score(
        completions,
        ["q0"] * 3 + ["q1"] * 3,
        ["c0"] * 3 + ["c1"] * 3,
        [REF] * 3 + ["run away"] * 3,
        ["p0"] * 3 + ["p1"] * 3,
    )
    baselines = [q for q in scorer.calls[0] if q.prefix == BASELINE_PREFIX]
    assert [(q.prompt, q.clip_id, q.target) for q in baselines] == [
        ("q0", "c0", REF),
        ("q1", "c1", "run away"),
    ]
    # p0: baseline -1; "get" -> -2/3, "back" -> -2/3, "run" -> -1. p1 ("run away"): baseline -1.
    assert batch.values == pytest.approx([1 / 3, 1 / 3, 0.0, 0.0, 0.0, 0.5])


def test_a_reused_prompt_id_is_an_error():
    reward = PerceptualCognitiveReward(WordRecallScorer())
    score(reward, [completion("get", "back")], prompt_id="p0", reference=REF)
    with pytest.raises(ValueError, match="prompt_id 'p0' was cached for clip 'c0' with another"):
        score(reward, [completion("get", "back")], prompt_id="p0", reference="other reply")
    with pytest.raises(ValueError, match="names two different samples"):
        reward.score([completion("a", "b")] * 2, ["x", "x"], ["c1", "c2"], ["r", "r"], ["p9", "p9"])


def test_empty_reference_and_empty_target_score_zero():
    scorer = WordRecallScorer()
    reward = PerceptualCognitiveReward(scorer)
    assert score(reward, [completion("get", "back")], reference="  ").values == [0.0]
    assert scorer.calls == []
    # A target the scorer cannot tokenize (NaN from the scorer) gives 0, not NaN.
    batch = score(reward, [completion("get", "back")], reference="...", prompt_id="p1")
    assert batch.values == [0.0]


def test_long_blocks_are_cut_and_reported():
    scorer = WordRecallScorer()
    reward = PerceptualCognitiveReward(scorer, max_block_chars=10)
    batch = score(reward, [completion("get back now and more", "x"), completion("get", "x")])
    assert scorer.calls[0][1].prefix == trace_prefix("get back n", "x")
    assert batch.metrics["rewards/pcg/truncation_rate"] == 0.5


class WordAxisEmbedder:
    """Bag-of-words sentence vectors: cosine = word overlap, computable by hand."""

    vocab = ("get", "back", "now", "fire", "close", "the", "is")

    def __call__(self, texts):
        return np.array([[words(t).count(w) + 0.0 for w in self.vocab] for t in texts])


def test_leak_filter_drops_copied_sentences_before_scoring():
    scorer = WordRecallScorer()
    reward = PerceptualCognitiveReward(scorer, leak_filter=LeakFilter(WordAxisEmbedder(), 0.5))
    think = "Get back now. The fire is close."
    batch = score(reward, [completion("fire", think), completion("fire", "The fire is close.")])
    # "Get back now." has cosine 1 with the reference: dropped. "The fire is close." has 0.
    assert scorer.calls[0][1].prefix == trace_prefix("fire", "The fire is close.")
    assert scorer.calls[0][2].prefix == trace_prefix("fire", "The fire is close.")
    assert batch.values == [0.0, 0.0]  # without the copy, the trace explains nothing
    assert batch.metrics["rewards/pcg/leak_removal_rate"] == pytest.approx(1 / 3)
    unfiltered = score(PerceptualCognitiveReward(WordRecallScorer()), [completion("fire", think)])
    assert unfiltered.values == [1.0]  # the gaming the filter prevents


def test_leak_filter_keeps_unfiltered_text_verbatim():
    out = LeakFilter(WordAxisEmbedder(), 0.5).filter(["Fire!\nClose.", ""], [REF, REF])
    assert [(f.text, f.removed, f.total) for f in out] == [("Fire!\nClose.", 0, 2), ("", 0, 0)]


def test_leak_filter_rejects_a_threshold_outside_cosine_range():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        LeakFilter(WordAxisEmbedder(), 1.5)


# ------------------------------------------------------------ the real VLM scorer
@pytest.fixture(scope="module")
def vlm(tiny_models):
    return load_vlm(tiny_models["vlm"])


@pytest.fixture(scope="module")
def frame_store(demo_data):
    store = MemoryFrameStore()
    for path in sorted(demo_data["videos"].glob("*.mp4"))[:2]:
        frames, _, _ = video.sample_frames(path)
        store.add(path.stem, frames=frames)
    return store


def direct_mean_logprob(model, processor, frames, query):
    """The definition, one query at a time: full text through the processor and the model."""
    import torch

    text = processor.apply_chat_template(query.prompt, tokenize=False, add_generation_prompt=True)
    context = processor(
        text=[text + query.prefix], videos=[frames], do_sample_frames=False, return_tensors="pt"
    )
    target = processor.tokenizer(query.target, add_special_tokens=False)["input_ids"]
    ids = torch.cat([context["input_ids"], torch.tensor([target])], dim=1)
    types = torch.cat(
        [context["mm_token_type_ids"], torch.zeros(1, len(target), dtype=torch.long)], 1
    )
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=types,
            pixel_values_videos=context["pixel_values_videos"],
            video_grid_thw=context["video_grid_thw"],
            second_per_grid_ts=context["second_per_grid_ts"],
        ).logits
    logp = logits[0, -len(target) - 1 : -1].log_softmax(-1)
    return float(logp.gather(-1, torch.tensor(target)[:, None]).mean())


def queries_for(store):
    a, b = store.clip_ids()
    return [
        LikelihoodQuery(video_messages("What now?"), a, BASELINE_PREFIX, "Fire on the ground."),
        LikelihoodQuery(
            video_messages("Tell me, what is happening over there?"),
            b,
            trace_prefix("Two figures walk left.", "Calm scene."),
            "Evening, all quiet.",
        ),
        LikelihoodQuery(video_messages("What now?"), a, trace_prefix("Fire.", "Danger!"), "Run!"),
    ]


def test_vlm_scorer_equals_the_definition_and_batching_changes_nothing(vlm, frame_store):
    model, processor = vlm
    queries = queries_for(frame_store)
    batched = VideoLikelihoodScorer(model, processor, frame_store, batch_size=8)
    one_by_one = VideoLikelihoodScorer(model, processor, frame_store, batch_size=1)
    got = batched.mean_logprob(queries)
    assert got == pytest.approx(one_by_one.mean_logprob(queries), abs=1e-5)
    expected = [
        direct_mean_logprob(model, processor, frame_store.frames(q.clip_id), q) for q in queries
    ]
    assert got == pytest.approx(expected, abs=1e-5)
    assert batched.forward_passes == 1 and one_by_one.forward_passes == 3


def test_vlm_scorer_reads_the_video_and_the_prefix(vlm, frame_store):
    model, processor = vlm
    scorer = VideoLikelihoodScorer(model, processor, frame_store)
    a, b = frame_store.clip_ids()
    base = LikelihoodQuery(video_messages("What now?"), a, trace_prefix("x", "y"), "Run now.")
    other_clip = LikelihoodQuery(base.prompt, b, base.prefix, base.target)
    other_prefix = LikelihoodQuery(base.prompt, a, trace_prefix("fire fire", "run"), base.target)
    s_base, s_clip, s_prefix = scorer.mean_logprob([base, other_clip, other_prefix])
    assert s_base != s_clip and s_base != s_prefix


def test_vlm_scorer_strips_none_keys_added_by_datasets(vlm, frame_store):
    model, processor = vlm
    scorer = VideoLikelihoodScorer(model, processor, frame_store)
    clip_id = frame_store.clip_ids()[0]
    clean = video_messages("What now?")
    unified = [
        {
            "role": "user",
            "content": [
                {"type": "video", "text": None},
                {"type": "text", "text": "What now?", "video": None},
            ],
        }
    ]
    assert clean_conversation(unified) == clean
    q = [LikelihoodQuery(p, clip_id, BASELINE_PREFIX, "Run.") for p in (clean, unified)]
    first, second = scorer.mean_logprob(q)
    assert first == pytest.approx(second, abs=1e-6)


def test_pcg_reward_over_the_vlm_batches_a_group(vlm, frame_store):
    model, processor = vlm
    scorer = VideoLikelihoodScorer(model, processor, frame_store, batch_size=16)
    reward = PerceptualCognitiveReward(scorer)
    clip_id = frame_store.clip_ids()[0]
    prompt = video_messages("What now?")
    completions = [completion(f"Figure {i} walks.", f"Thought {i}.") for i in range(8)]
    batch = reward.score(completions, [prompt] * 8, [clip_id] * 8, ["Run now."] * 8, ["p0"] * 8)
    assert scorer.forward_passes == 1  # 8 traces + 1 baseline in one pass
    assert all(math.isfinite(v) for v in batch.values) and len(set(batch.values)) > 1
    prefix = trace_prefix("Figure 3 walks.", "Thought 3.")
    baseline, trace = scorer.mean_logprob(
        [
            LikelihoodQuery(prompt, clip_id, BASELINE_PREFIX, "Run now."),
            LikelihoodQuery(prompt, clip_id, prefix, "Run now."),
        ]
    )
    assert batch.values[3] == pytest.approx(trace - baseline, abs=1e-5)


def test_missing_clip_is_an_error_not_zero(vlm, frame_store):
    model, processor = vlm
    reward = PerceptualCognitiveReward(VideoLikelihoodScorer(model, processor, frame_store))
    with pytest.raises(MissingClipError, match="'nope'"):
        reward.score([completion("a", "b")], [video_messages("?")], ["nope"], ["Run."], ["p0"])


def test_long_prefixes_keep_their_ends(vlm, frame_store):
    assert middle_cut(list(range(10)), 4) == ([0, 1, 8, 9], True)
    assert middle_cut([1, 2], 4) == ([1, 2], False)
    model, processor = vlm
    scorer = VideoLikelihoodScorer(model, processor, frame_store, max_prefix_tokens=16)
    clip_id = frame_store.clip_ids()[0]
    q = LikelihoodQuery(video_messages("?"), clip_id, trace_prefix("word " * 500, "t"), "Run.")
    assert math.isfinite(scorer.mean_logprob([q])[0]) and scorer.prefix_cuts == 1


# ------------------------------------------------------------- sentence embedder
@pytest.fixture(scope="module")
def embedder(tiny_models):
    return HFSentenceEmbedder.load(str(tiny_models["text_encoder"]))


def test_sentence_embedder_is_normalised_and_ignores_padding(embedder):
    texts = [
        "Get back now.",
        "The lantern glows blue over a quiet street tonight.",
        "Get back now.",
    ]
    vectors = embedder(texts)
    assert vectors.shape == (3, embedder.dim)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    assert vectors[0] @ vectors[2] == pytest.approx(1.0, abs=1e-5)
    # Mean pooling over real tokens only: padding in a batch does not move a vector.
    assert embedder(texts[:1])[0] == pytest.approx(vectors[0], abs=1e-5)
    assert embedder([]).shape == (0, embedder.dim)


def test_leak_filter_over_the_real_embedder(embedder):
    out = LeakFilter(embedder, threshold=0.999).filter(
        ["Get back now. The lantern glows blue."], ["Get back now."]
    )
    assert (out[0].text, out[0].removed, out[0].total) == ("The lantern glows blue.", 1, 2)
