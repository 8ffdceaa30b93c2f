"""CLIP scene-text reward: hand-computed similarities, truncation, the frame store contract."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebmrl import video
from ebmrl.frame_store import MemoryFrameStore, MissingClipError
from ebmrl.rewards.clip import (
    ClipReward,
    OpenClipEncoder,
    TextEmbeddings,
    max_frame_similarity,
    sentence_topk_similarity,
    topk_count,
)
from ebmrl.rewards.sentences import split_sentences

R2 = math.sqrt(0.5)


# ------------------------------------------------------------------ pure functions
def test_max_frame_similarity_hand_computed():
    frames = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert max_frame_similarity(np.array([1.0, 0.0]), frames) == pytest.approx(1.0)
    # Inputs need not be normalised: cosines [0, -1] -> max 0.
    assert max_frame_similarity(np.array([2.0, 0.0]), np.array([[0.0, 3.0], [-1.0, 0.0]])) == (
        pytest.approx(0.0)
    )
    # [1, 1] vs [1, 0] and [0, 2]: cos = sqrt(1/2) for both.
    assert max_frame_similarity(np.array([1.0, 1.0]), np.array([[1.0, 0], [0, 2.0]])) == (
        pytest.approx(R2)
    )


FIVE_FRAMES = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


@pytest.mark.parametrize(
    ("frac", "expected"),
    [
        # sentence [1,0]: cosines [1, r, 0, -1, 0]; sentence [0,1]: [0, r, 1, 0, -1], r = sqrt(.5)
        (0.2, 1.0),  # k = 1: top-1 of each is 1
        (0.4, (1 + R2) / 2),  # k = 2: (1 + r) / 2 for each
        (0.5, (1 + R2) / 2),  # k = floor(2.5) = 2: (1 + r) / 2 for each
        (0.6, (1 + R2 + 0) / 3),  # k = floor(3.0) = 3: (1 + r + 0) / 3 for each
        (1.0, (1 + R2 + 0 - 1 + 0) / 5),  # k = 5: plain mean
    ],
)
def test_sentence_topk_similarity_hand_computed(frac, expected):
    sentences = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert sentence_topk_similarity(sentences, FIVE_FRAMES, frac) == pytest.approx(expected)


def test_sentence_topk_averages_over_sentences():
    # k = 2. [1,0]: cosines [1, r, 0, -1, 0] -> (1 + r) / 2.
    sentences = np.array([[1.0, 0.0], [0.0, -1.0]])
    # [0,-1]: cosines [0, -r, -1, 0, 1] -> top-2 mean (1 + 0) / 2
    assert sentence_topk_similarity(sentences, FIVE_FRAMES, 0.4) == pytest.approx(
        ((1 + R2) / 2 + 0.5) / 2
    )


@pytest.mark.parametrize(
    ("frames", "frac", "k"),
    [
        # max(1, floor(frac * T)), by hand: the authors' max(1, int(T * 0.2)).
        (1, 0.2, 1),  # 0.2 -> 0 -> at least 1
        (4, 0.2, 1),  # 0.8 -> 0 -> 1
        (5, 0.2, 1),
        (8, 0.2, 1),  # 1.6 -> 1
        (9, 0.2, 1),
        (10, 0.2, 2),
        (15, 0.2, 3),  # 3.0000000000000004 -> 3
        (16, 0.2, 3),  # 3.2 -> 3
        (32, 0.2, 6),  # 6.4 -> 6
        (35, 0.2, 7),  # 7.000000000000001 -> 7
        (10, 1.0, 10),
        (3, 0.5, 1),
    ],
)
def test_topk_count_is_the_floor(frames, frac, k):
    assert topk_count(frames, frac) == k
    assert topk_count(frames, frac) == max(1, int(frames * frac))


def test_no_sentences_score_zero_and_no_frames_is_an_error():
    assert sentence_topk_similarity(np.zeros((0, 2)), FIVE_FRAMES) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        max_frame_similarity(np.ones(2), np.zeros((0, 2)))


# ------------------------------------------------ reward with a transparent encoder
class WordAxisEncoder:
    """A real (if simple) text encoder: each known word is one axis; at most 3 words read."""

    words = ("red", "blue", "fire")
    context_length = 3

    def __init__(self):
        self.calls = []

    def encode_texts(self, texts):
        self.calls.append(list(texts))
        vectors, truncated = [], []
        for text in texts:
            tokens = [w.strip(".!?,") for w in text.lower().split()]
            read = tokens[: self.context_length]
            vectors.append([float(read.count(w)) for w in self.words])
            truncated.append(len(tokens) > self.context_length)
        return TextEmbeddings(np.array(vectors), truncated)


@pytest.fixture
def axis_store():
    store = MemoryFrameStore()
    # Frames: pure red, pure blue, red+fire.
    store.add("clip", embeddings=np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 1.0]]))
    return store


def test_clip_reward_max_hand_computed(axis_store):
    encoder = WordAxisEncoder()
    reward = ClipReward(encoder, axis_store, mode="max")
    completions = [
        "<perception>red</perception><think>t</think><answer>a</answer>",  # cos 1 with frame 1
        "<perception>fire</perception>",  # cos sqrt(1/2) with frame 3
        "<perception>red fire</perception>",  # cos 1 with frame 3
        "<think>no perception</think>",  # 0
        "<perception>   </perception>",  # empty: 0
        "<perception>blue red red fire fire</perception>",  # truncated: reads "blue red red"
    ]
    batch = reward.score(completions, ["clip"] * len(completions))
    # Last: [red, blue, fire] counts [2, 1, 0] vs frames: red 2/sqrt5, blue 1/sqrt5,
    # red+fire 2/sqrt10 -> max 2/sqrt5.
    assert batch.values == pytest.approx([1.0, R2, 1.0, 0.0, 0.0, 2 / math.sqrt(5)])
    assert len(encoder.calls) == 1  # one batch for the whole group
    assert encoder.calls[0] == ["red", "fire", "red fire", "blue red red fire fire"]
    assert batch.metrics == {
        "rewards/clip/truncation_rate": 1 / 4,
        "rewards/clip/missing_rate": 2 / 6,
    }


def test_clip_reward_sent_topk_hand_computed(axis_store):
    encoder = WordAxisEncoder()
    reward = ClipReward(encoder, axis_store, mode="sent_topk", topk_fraction=0.7)
    # k = floor(0.7 * 3) = 2. "Red." -> cos [1, 0, r]: top-2 (1 + r)/2.
    # "Blue!" -> [0, 1, 0]: top-2 0.5. "Fire" (no punctuation: one sentence) -> [0, 0, r]: r/2.
    batch = reward.score(
        ["<perception>Red. Blue!</perception>", "<perception>Fire</perception>"], ["clip"] * 2
    )
    assert batch.values == pytest.approx([((1 + R2) / 2 + 0.5) / 2, R2 / 2])
    assert encoder.calls == [["Red.", "Blue!", "Fire"]]  # every sentence of the group at once


def test_sent_topk_caps_sentences_and_reports_it(axis_store):
    encoder = WordAxisEncoder()
    reward = ClipReward(encoder, axis_store, mode="sent_topk", max_sentences=2)
    batch = reward.score(["<perception>Red. Blue. Fire.</perception>"], ["clip"])
    assert encoder.calls == [["Red.", "Blue."]]
    assert batch.metrics["rewards/clip/truncation_rate"] == 1.0


def test_missing_clip_is_an_error_naming_it(axis_store):
    reward = ClipReward(WordAxisEncoder(), axis_store)
    with pytest.raises(MissingClipError, match="'clip_9'.*did the frames stage run"):
        reward.score(["<perception>red</perception>", "no tags"], ["clip", "clip_9"])
    # Even when no completion has a perception to score.
    with pytest.raises(MissingClipError, match="clip_9"):
        reward.score(["no tags"], ["clip_9"])


def test_column_length_mismatch_is_an_error(axis_store):
    with pytest.raises(ValueError, match="1 values in column 'clip_ids' for 2 completions"):
        ClipReward(WordAxisEncoder(), axis_store).score(["a", "b"], ["clip"])


# ------------------------------------------------------------- real tiny open_clip
@pytest.fixture(scope="module")
def encoder(tiny_models):
    return OpenClipEncoder.load(str(tiny_models["clip"]))


@pytest.fixture(scope="module")
def clip_store(encoder, demo_data):
    store = MemoryFrameStore()
    for path in sorted(demo_data["videos"].glob("*.mp4"))[:2]:
        frames, _, _ = video.sample_frames(path)
        store.add(path.stem, frames=frames, embeddings=encoder.encode_frames(frames))
    return store


class CountingEncoder:
    """Delegates to the real encoder and counts its calls."""

    def __init__(self, inner):
        self.inner = inner
        self.text_calls = 0
        self.frame_calls = 0

    def encode_texts(self, texts):
        self.text_calls += 1
        return self.inner.encode_texts(texts)

    def encode_frames(self, frames):
        self.frame_calls += 1
        return self.inner.encode_frames(frames)


def test_truncation_at_the_context_length_is_exact(encoder):
    # "a" is one BPE token; with start and end tokens, 75 words fill the 77-token context.
    texts = [" ".join(["a"] * 75), " ".join(["a"] * 76), "two figures", "x" * 10_000]
    assert encoder.encode_texts(texts).truncated == [False, True, False, True]


def test_no_character_cut_before_the_77_tokens(encoder):
    import torch

    # Long one-token words: the 75 words CLIP reads span about 975 characters, more than
    # any characters-per-token bound would keep (the old 8 x 77 = 616 would cut here).
    words = ["photography", "international", "understanding", "conversation", "electricity"]
    text = " ".join(words * 20)
    tokens = encoder.tokenizer([text], context_length=encoder.context_length)
    assert int((tokens[0] != 0).sum()) == 77 and len(text) > 1200
    got = encoder.encode_texts([text])
    with torch.no_grad():
        direct = encoder.model.encode_text(tokens).numpy()[0]
    assert got.truncated == [True]
    assert got.vectors[0] == pytest.approx(direct / np.linalg.norm(direct), abs=1e-5)


def test_real_encoder_reward_matches_direct_similarity(encoder, clip_store):
    clip_id = clip_store.clip_ids()[0]
    counting = CountingEncoder(encoder)
    reward = ClipReward(counting, clip_store, mode="max")
    perceptions = ["Two white figures walk left.", "A dim blue street with fire.", "Calm."]
    completions = [
        f"<perception>{p}</perception><think>t</think><answer>a</answer>" for p in perceptions
    ]
    batch = reward.score(completions * 3, [clip_id] * 9)  # G = 9
    direct = [
        max_frame_similarity(v, clip_store.embeddings(clip_id))
        for v in encoder.encode_texts(perceptions).vectors
    ]
    assert batch.values == pytest.approx(direct * 3, abs=1e-6)
    assert all(-1 <= v <= 1 for v in batch.values)
    assert counting.text_calls == 1 and counting.frame_calls == 0  # frames are never re-encoded


def test_real_encoder_sent_topk_is_finite(encoder, clip_store):
    clip_id = clip_store.clip_ids()[1]
    reward = ClipReward(encoder, clip_store, mode="sent_topk")
    batch = reward.score(["<perception>A street. Fire!\nTwo figures.</perception>"], [clip_id])
    assert -1 <= batch.values[0] <= 1 and batch.values[0] != 0.0


def test_encoded_frames_are_normalised(encoder, clip_store):
    frames = clip_store.frames(clip_store.clip_ids()[0])
    embs = encoder.encode_frames(frames)
    assert embs.shape[0] == len(frames)
    assert np.linalg.norm(embs, axis=1) == pytest.approx(np.ones(len(frames)), abs=1e-5)


# ------------------------------------------------------------------ sentence split
@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Two figures walk. Fire! Run?  Now", ["Two figures walk.", "Fire!", "Run?", "Now"]),
        ("line one\nline two\n\n", ["line one", "line two"]),
        ("火が見える。逃げろ！", ["火が見える。", "逃げろ！"]),
        ("It costs 3.5 coins.", ["It costs 3.5 coins."]),
        ("1. A street. 2. A fire.", ["A street.", "A fire."]),
        ("... — !", []),
        ("", []),
    ],
)
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences
    assert split_sentences(text, rule="ebmrl") == sentences


def authors_sentences(text):
    """The released SentTopK server's rule, written with re exactly as they define it."""
    import re

    pieces = [s.strip() for s in re.split(r"[.!?。！？\n]", text)]
    return [s for s in pieces if len(s) > 5 and not re.match(r"^\d+\.?$", s)]


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Two figures walk. Fire! Run?  Now", ["Two figures walk"]),  # short ones dropped
        ("It costs 3.5 coins.", ["It costs 3", "5 coins"]),  # every '.' splits
        ("A dim street\nwith fire on the ground", ["A dim street", "with fire on the ground"]),
        ("火が見える大きな火。逃げろ逃げろ逃げろ！", ["火が見える大きな火", "逃げろ逃げろ逃げろ"]),
        ("123456. 1234567", []),  # bare numbers dropped
        ("Fire!", []),  # the caller scores the whole text as one sentence
    ],
)
def test_authors_sentence_rule_hand_computed(text, sentences):
    assert split_sentences(text, rule="authors") == sentences == authors_sentences(text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab1 .!?\n。！？\t", max_size=80))
def test_authors_sentence_rule_is_their_definition(text):
    assert split_sentences(text, rule="authors") == authors_sentences(text)


def test_unknown_sentence_rule_is_an_error(axis_store):
    with pytest.raises(ValueError, match="unknown sentence rule 'nltk'"):
        split_sentences("x", rule="nltk")
    with pytest.raises(ValueError, match="unknown sentence rule"):
        ClipReward(WordAxisEncoder(), axis_store, mode="sent_topk", sentence_rule="nltk")


def test_sent_topk_with_the_authors_rule(axis_store):
    encoder = WordAxisEncoder()
    reward = ClipReward(encoder, axis_store, mode="sent_topk", sentence_rule="authors")
    # "Red." and "Blue!" are too short for the authors' rule: the whole text is one sentence.
    batch = reward.score(["<perception> Red. Blue! </perception>"], ["clip"])
    assert encoder.calls == [["Red. Blue!"]]
    assert batch.values[0] != 0.0


def test_clip_text_is_the_first_block_of_the_tag_in_use(axis_store):
    encoder = WordAxisEncoder()
    reward = ClipReward(encoder, axis_store, perception_tag="vision")
    text = "<vision> red <vision>blue</vision></vision><perception>fire</perception>"
    reward.score([text, "<perception>red</perception>"], ["clip"] * 2)
    assert encoder.calls == [["red <vision>blue"]]  # first opener to first closer, stripped


def test_split_sentences_is_linear_on_long_whitespace_runs():
    assert split_sentences("a." + " " * 1_000_000 + "b") == ["a.", "b"]
