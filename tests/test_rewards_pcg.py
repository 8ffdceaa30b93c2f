"""PCG reward: baseline once per prompt, batching, leak filter, and the VLM scorer."""

import math
import re

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ebmrl import video
from ebmrl.frame_store import MemoryFrameStore, MissingClipError
from ebmrl.models import load_vlm
from ebmrl.models.vlm import video_messages
from ebmrl.rewards.embed import HFSentenceEmbedder
from ebmrl.rewards.leak import LeakFilter
from ebmrl.rewards.likelihood import VideoLikelihoodScorer, clean_conversation
from ebmrl.rewards.pcg import (
    BASELINE_PREFIX,
    LikelihoodQuery,
    PerceptualCognitiveReward,
    trace_block,
    trace_prefix,
)
from ebmrl.tags import AUTHORS_TAGS, DEFAULT_TAGS

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


def prefix(perception, think):
    """What the authors condition on: the two blocks joined by a newline, then a newline."""
    return f"<perception>{perception}</perception>\n<think>{think}</think>\n"


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
        "<think>no perception</think><answer>get back now</answer>",  # no trace -> 0
        completion("fire", "   "),  # an empty think is a trace: 0 of 3 -> 0
        "<perception>get</perception><b><think>back now</think>",  # a '<' in the gap -> 0
    ]
    batch = score(reward, completions)
    assert batch.values == pytest.approx([2 / 3, 2 / 3, 0.0, 1.0, 0.0, 0.0, 0.0])
    # One scorer call: the baseline once, then the five traces.
    assert len(scorer.calls) == 1
    queries = scorer.calls[0]
    assert [q.prefix for q in queries] == [
        BASELINE_PREFIX,
        prefix("fire", "we should get back"),
        prefix("figures run back", "now"),
        prefix("a street", "calm"),
        prefix("get back now", "yes"),
        prefix("fire", "   "),
    ]
    assert {(q.prompt, q.clip_id, q.target) for q in queries} == {("prompt", "c0", REF)}
    assert batch.metrics["rewards/pcg/missing_rate"] == pytest.approx(2 / 7)
    assert batch.metrics["rewards/pcg/baseline_queries"] == 1.0
    assert "rewards/pcg/leak_removal_rate" not in batch.metrics  # no filter configured


def test_trace_layout_is_the_authors():
    text = "Sure.<perception> P </perception> ok <think>T</think>\n<answer>A</answer>"
    assert trace_block(text) == "<perception> P </perception>\n<think>T</think>"
    assert trace_prefix(trace_block(text)) == "<perception> P </perception>\n<think>T</think>\n"
    assert BASELINE_PREFIX == ""  # the baseline is the bare prompt, then the reference
    vision = "<vision>v</vision><think></think>"
    assert trace_block(vision, AUTHORS_TAGS) == "<vision>v</vision>\n<think></think>"
    assert trace_block(vision, DEFAULT_TAGS) is None


def authors_trace(text, tags):
    """Their VT_COMBINED_RE search, written with re exactly as they define it."""
    p, t = tags[0], tags[1]
    match = re.search(rf"(<{p}>.*?</{p}>)[^<]*(<{t}>.*?</{t}>)", text, re.DOTALL)
    return match.group(1) + "\n" + match.group(2) if match else None


TRACE_PIECES = ["<vision>", "</vision>", "<perception>", "</perception>", "<think>", "</think>"]
trace_text = st.lists(
    st.sampled_from([*TRACE_PIECES, "<answer>", "<", ">", "x", " ", "\n"]), max_size=24
).map("".join)


@settings(max_examples=2000, deadline=None)
@given(trace_text, st.sampled_from([AUTHORS_TAGS, DEFAULT_TAGS]))
@example("<vision>a</vision>x</vision><think>b</think>", AUTHORS_TAGS)
@example("<vision>a</vision><b></vision> <think>b</think>", AUTHORS_TAGS)
@example("<vision><vision>a</vision><think></think></think>", AUTHORS_TAGS)
@pytest.mark.slow
def test_trace_block_is_the_authors_regex_search(text, tags):
    assert trace_block(text, tags) == authors_trace(text, tags)


def test_trace_block_is_linear():
    import time

    text = "<vision>x</vision>y" * 40_000 + "<think>" * 40_000
    started = time.perf_counter()
    assert trace_block(text, AUTHORS_TAGS) is None
    assert time.perf_counter() - started < 1.0


def test_reward_conditions_on_the_trace_block_verbatim():
    scorer = WordRecallScorer()
    reward = PerceptualCognitiveReward(scorer, tags=AUTHORS_TAGS, max_block_chars=None)
    texts = ["<vision> get\n </vision> filler <think>back</think><answer>x</answer>"]
    score(reward, texts)
    assert scorer.calls[0][1].prefix == trace_block(texts[0], AUTHORS_TAGS) + "\n"


def test_baseline_is_cached_per_prompt_id_across_calls():
    scorer = WordRecallScorer()
    reward = PerceptualCognitiveReward(scorer)
    score(reward, [completion("get", "back")])
    second = score(reward, [completion("now", "x"), completion("get back now", "x")])
    assert [q.prefix == BASELINE_PREFIX for q in scorer.calls[1]] == [False, False]
    assert all(q.prefix for q in scorer.calls[1])
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
    assert scorer.calls[0][1].prefix == prefix("get back n", "x")
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
    assert scorer.calls[0][1].prefix == prefix("fire", "The fire is close.")
    assert scorer.calls[0][2].prefix == prefix("fire", "The fire is close.")
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
    """The authors' definition, one query at a time: prompt + prefix + target as one
    string through the processor, labels masked up to the tokenized prompt + prefix, and
    the model's own loss (mean over the target tokens), negated."""
    import torch

    text = processor.apply_chat_template(query.prompt, tokenize=False, add_generation_prompt=True)
    full = processor(
        text=[text + query.prefix + query.target],
        videos=[frames],
        do_sample_frames=False,
        return_tensors="pt",
    )
    context = processor(
        text=[text + query.prefix], videos=[frames], do_sample_frames=False, return_tensors="pt"
    )
    labels = full["input_ids"].clone()
    labels[:, : min(context["input_ids"].shape[1], labels.shape[1] - 1)] = -100
    with torch.no_grad():
        loss = model(**full, labels=labels).loss
    return -float(loss)


def queries_for(store):
    a, b = store.clip_ids()
    return [
        LikelihoodQuery(video_messages("What now?"), a, BASELINE_PREFIX, "Fire on the ground."),
        LikelihoodQuery(
            video_messages("Tell me, what is happening over there?"),
            b,
            prefix("Two figures walk left.", "Calm scene."),
            "Evening, all quiet.",
        ),
        LikelihoodQuery(video_messages("What now?"), a, prefix("Fire.", "Danger!"), "Run!"),
        LikelihoodQuery(video_messages("What now?"), a, prefix("", ""), "Run, now!"),
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
    assert batched.forward_passes == 1 and one_by_one.forward_passes == 4


def test_vlm_scorer_reads_the_video_and_the_prefix(vlm, frame_store):
    model, processor = vlm
    scorer = VideoLikelihoodScorer(model, processor, frame_store)
    a, b = frame_store.clip_ids()
    base = LikelihoodQuery(video_messages("What now?"), a, prefix("x", "y"), "Run now.")
    other_clip = LikelihoodQuery(base.prompt, b, base.prefix, base.target)
    other_prefix = LikelihoodQuery(base.prompt, a, prefix("fire fire", "run"), base.target)
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
    baseline, trace = scorer.mean_logprob(
        [
            LikelihoodQuery(prompt, clip_id, BASELINE_PREFIX, "Run now."),
            LikelihoodQuery(prompt, clip_id, prefix("Figure 3 walks.", "Thought 3."), "Run now."),
        ]
    )
    assert batch.values[3] == pytest.approx(trace - baseline, abs=1e-5)


def test_missing_clip_is_an_error_not_zero(vlm, frame_store):
    model, processor = vlm
    reward = PerceptualCognitiveReward(VideoLikelihoodScorer(model, processor, frame_store))
    with pytest.raises(MissingClipError, match="'nope'"):
        reward.score([completion("a", "b")], [video_messages("?")], ["nope"], ["Run."], ["p0"])


def test_sequences_over_the_limit_score_zero_and_are_counted(vlm, frame_store):
    model, processor = vlm
    clip_id = frame_store.clip_ids()[0]
    prompt = video_messages("What now?")
    short = LikelihoodQuery(prompt, clip_id, prefix("fire", "run"), "Run.")
    long = LikelihoodQuery(prompt, clip_id, prefix("word " * 300, "run"), "Run.")
    unlimited = VideoLikelihoodScorer(model, processor, frame_store, max_sequence_tokens=None)
    inputs = processor(
        text=[
            processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            + long.prefix
            + long.target
        ],
        videos=[frame_store.frames(clip_id)],
        do_sample_frames=False,
        return_tensors="pt",
    )
    length = inputs["input_ids"].shape[1]  # the length the limit applies to, video included
    at_limit = VideoLikelihoodScorer(model, processor, frame_store, max_sequence_tokens=length)
    below = VideoLikelihoodScorer(model, processor, frame_store, max_sequence_tokens=length - 1)
    assert all(math.isfinite(v) for v in unlimited.mean_logprob([short, long]))
    assert math.isfinite(at_limit.mean_logprob([long])[0]) and at_limit.too_long == 0
    got = below.mean_logprob([short, long])
    assert math.isfinite(got[0]) and math.isnan(got[1]) and below.too_long == 1
    reward = PerceptualCognitiveReward(below, max_block_chars=None)
    batch = reward.score(
        [completion("fire", "run"), completion("word " * 300, "run")],
        [prompt] * 2,
        [clip_id] * 2,
        ["Run."] * 2,
        ["p0"] * 2,
    )
    assert batch.values[1] == 0.0 and batch.values[0] != 0.0
    assert batch.metrics["rewards/pcg/unscored_rate"] == 0.5


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


def test_vlm_scorer_shares_each_prompts_prefix_with_the_same_scores(vlm, frame_store):
    """A group's 8 traces and its baseline, and a second prompt's: each prompt + clip
    through the vision tower and the model once, the scores those of whole rows."""
    from ebmrl.models.shared_prefix import VisionCalls

    model, processor = vlm
    a, b = frame_store.clip_ids()
    queries = []
    for clip_id, prompt, ref in ((a, "What now?", "Run now."), (b, "And there?", "All calm.")):
        conv = video_messages(prompt)
        queries.append(LikelihoodQuery(conv, clip_id, BASELINE_PREFIX, ref))
        queries += [
            LikelihoodQuery(conv, clip_id, prefix(f"Figure {i} walks" * (i + 1), f"T{i}."), ref)
            for i in range(8)
        ]
    scores = {}
    for shared in (False, True):
        scorer = VideoLikelihoodScorer(
            model, processor, frame_store, batch_size=16, shared_prefix=shared
        )
        with VisionCalls(model) as calls:
            scores[shared] = scorer.mean_logprob(queries)
        scores[shared, "videos"] = calls.items
    assert scores[False, "videos"] == 18  # every row encodes its clip
    assert scores[True, "videos"] == 2  # once per prompt: 1 vs 9 for each group
    assert scores[True] == pytest.approx(scores[False], abs=1e-4)
    assert len(set(scores[True])) > 10
