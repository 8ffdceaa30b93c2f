"""CLIP scene-text alignment between the perception block and the clip's frames.

method.md section 2: the cosine between the CLIP text embedding of the perception and
the CLIP image embeddings of the clip's frames (sampled for CLIP by the frames stage,
``ebmrl.video.clip_frame_indices``).

- **Max** (``mode="max"``, the paper's best): the highest cosine over the frames.
- **SentTopK** (``mode="sent_topk"``): split the perception into sentences
  (``sentence_rule``: ours or the authors', ``ebmrl.rewards.sentences``; none found: the
  whole text is one sentence); for each sentence average its top ``topk_count(T, frac)``
  = max(1, floor(frac * T)) frame cosines; average over sentences.

The perception is the content of the first ``<perception>`` block (``perception_tag``:
``vision`` for the authors' tags), from the first opener to the first closer after it,
stripped; missing or empty: 0. Frame embeddings come from the frame store, filled once
per clip by the frames stage: this reward never encodes frames. A clip absent from the
store raises ``MissingClipError`` (the frames stage did not run for it; the authors
score such a clip -1, we refuse to train on it).

CLIP's text tower reads a fixed number of tokens (77 for the OpenAI models). The text
goes to CLIP's tokenizer whole (no character cut before it), the tokenizer cuts at the
context length, and the encoder says which texts were cut: the reward reports the rate
as ``rewards/clip/truncation_rate``. A perception is bounded by the completion length
(``grpo.max_completion_length``), so tokenizing it whole costs little.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ebmrl.frame_store import FrameStore, l2_normalise
from ebmrl.rewards.reward_batch import RewardBatch, check_lengths, completion_texts, rate
from ebmrl.rewards.sentences import SentenceRule, split_sentences
from ebmrl.tags import DEFAULT_TAGS, first_block

ClipMode = Literal["max", "sent_topk"]


# ------------------------------------------------------------------ pure similarities
def _cosines(queries: np.ndarray, frame_embs: np.ndarray) -> np.ndarray:
    """Cosine matrix ``(Q, T)``; inputs need not be normalised."""
    frames = np.asarray(frame_embs, dtype=np.float64)
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise ValueError(f"frame embeddings must be a non-empty (T, D) array, got {frames.shape}")
    q = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    if q.shape[1] != frames.shape[1]:
        raise ValueError(f"text dim {q.shape[1]} != frame dim {frames.shape[1]}")
    return l2_normalise(q) @ l2_normalise(frames).T


def max_frame_similarity(text_emb: np.ndarray, frame_embs: np.ndarray) -> float:
    """Highest cosine between one text embedding ``(D,)`` and the frames ``(T, D)``."""
    return float(_cosines(text_emb, frame_embs)[0].max())


def topk_count(num_frames: int, frac: float) -> int:
    """``max(1, floor(frac * T))`` frames (the authors' ``max(1, int(T * frac))``)."""
    return max(1, math.floor(num_frames * frac))


def sentence_topk_similarity(
    sentence_embs: np.ndarray, frame_embs: np.ndarray, frac: float = 0.2
) -> float:
    """Mean over sentences ``(S, D)`` of the mean of each one's top-k frame cosines.

    0 for no sentences (an empty perception scores 0, as in the Max variant).
    """
    sentences = np.asarray(sentence_embs)
    if sentences.size == 0:
        return 0.0
    sims = _cosines(sentences, frame_embs)  # (S, T)
    k = topk_count(sims.shape[1], frac)
    top = np.sort(sims, axis=1)[:, -k:]
    return float(top.mean(axis=1).mean())


# -------------------------------------------------------------------- text encoder
@dataclass(frozen=True)
class TextEmbeddings:
    """``vectors[i]`` embeds ``texts[i]`` (L2-normalised); ``truncated[i]`` if it was cut."""

    vectors: np.ndarray
    truncated: list[bool]


class ClipTextEncoder(Protocol):
    """What ``ClipReward`` needs from a CLIP model: batched, truncation-aware text embeddings."""

    def encode_texts(self, texts: Sequence[str]) -> TextEmbeddings: ...


class OpenClipEncoder:
    """open_clip model + tokenizer (+ preprocess for frames), any size, tiny or real.

    ``encode_texts`` also tokenizes every text with one slot more than the context, so
    truncation at the context length is known, not silent. ``encode_frames`` is what the frames stage (and
    the benchmark's naive baseline) uses to embed a clip's frames.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        preprocess: Any = None,
        device: str = "cpu",
        batch_size: int = 256,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.batch_size = batch_size
        self.context_length = int(
            getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77)
        )

    @classmethod
    def load(
        cls, id_or_path: str, pretrained: str | None = None, device: str = "cpu"
    ) -> OpenClipEncoder:
        from ebmrl.models import load_clip

        model, preprocess, tokenizer = load_clip(id_or_path, pretrained=pretrained, device=device)
        return cls(model, tokenizer, preprocess, device=device)

    def _pad_id(self) -> int:
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer
        pad = getattr(inner, "pad_token_id", None) if inner is not None else None
        return 0 if pad is None else int(pad)  # SimpleTokenizer pads with 0

    def encode_texts(self, texts: Sequence[str]) -> TextEmbeddings:
        import torch

        if not texts:
            return TextEmbeddings(np.zeros((0, 0), dtype=np.float32), [])
        prepared = list(texts)
        # One slot more than the context: a text fills it iff it does not fit.
        probe = self.tokenizer(prepared, context_length=self.context_length + 1)
        truncated = [bool(o) for o in (probe[:, -1] != self._pad_id()).tolist()]
        tokens = self.tokenizer(prepared, context_length=self.context_length)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(prepared), self.batch_size):
                batch = tokens[start : start + self.batch_size].to(self.device)
                chunks.append(self.model.encode_text(batch).float().cpu().numpy())
        vectors = l2_normalise(np.concatenate(chunks).astype(np.float32))
        return TextEmbeddings(vectors, truncated)

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """CLIP image embeddings ``(T, D)`` (L2-normalised) of ``(T, H, W, 3)`` uint8 frames."""
        import torch
        from PIL import Image

        if self.preprocess is None:
            raise ValueError(
                "this encoder has no image preprocess: load it with OpenClipEncoder.load"
            )
        images = torch.stack([self.preprocess(Image.fromarray(np.asarray(f))) for f in frames])
        with torch.no_grad():
            embs = self.model.encode_image(images.to(self.device)).float().cpu().numpy()
        return l2_normalise(embs.astype(np.float32))


# -------------------------------------------------------------------------- reward
class ClipReward:
    """CLIP alignment of each completion's perception with its clip's stored frames."""

    name = "clip"

    def __init__(
        self,
        encoder: ClipTextEncoder,
        frame_store: FrameStore,
        mode: ClipMode = "max",
        topk_fraction: float = 0.2,
        max_sentences: int | None = 16,
        sentence_rule: SentenceRule = "ebmrl",
        perception_tag: str = DEFAULT_TAGS.perception,
    ):
        if mode not in ("max", "sent_topk"):
            raise ValueError(f"unknown CLIP reward mode {mode!r}; use 'max' or 'sent_topk'")
        if not 0 < topk_fraction <= 1:
            raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
        self.encoder = encoder
        self.frame_store = frame_store
        self.mode = mode
        self.topk_fraction = topk_fraction
        self.max_sentences = max_sentences
        self.sentence_rule = sentence_rule
        self.perception_tag = perception_tag
        split_sentences("", sentence_rule)  # an unknown rule fails here, not mid-training

    def score(self, completions: Sequence[object], clip_ids: Sequence[str]) -> RewardBatch:
        texts = completion_texts(completions)
        check_lengths("clip", len(texts), clip_ids=clip_ids)
        # Fetch every clip first: a missing clip is an error even if no perception needs it.
        frames = {cid: self.frame_store.embeddings(cid) for cid in dict.fromkeys(clip_ids)}
        perceptions = [(first_block(t, self.perception_tag) or "").strip() for t in texts]
        scored = [i for i, p in enumerate(perceptions) if p]
        values = [0.0] * len(texts)
        if self.mode == "max":
            truncated = self._score_max(perceptions, scored, clip_ids, frames, values)
        else:
            truncated = self._score_sent_topk(perceptions, scored, clip_ids, frames, values)
        return RewardBatch(
            values,
            {
                "rewards/clip/truncation_rate": rate(truncated, len(scored)),
                "rewards/clip/missing_rate": rate(len(texts) - len(scored), len(texts)),
            },
        )

    def _score_max(self, perceptions, scored, clip_ids, frames, values) -> int:
        encoded = self.encoder.encode_texts([perceptions[i] for i in scored])
        for row, i in enumerate(scored):
            values[i] = max_frame_similarity(encoded.vectors[row], frames[clip_ids[i]])
        return sum(encoded.truncated)

    def _score_sent_topk(self, perceptions, scored, clip_ids, frames, values) -> int:
        sentences: list[str] = []
        rows_of: dict[int, list[int]] = {}  # completion index -> its rows in `sentences`
        cut_rows = set()
        for i in scored:
            found = split_sentences(perceptions[i], self.sentence_rule) or [perceptions[i]]
            if self.max_sentences is not None and len(found) > self.max_sentences:
                cut_rows.add(i)
                found = found[: self.max_sentences]
            rows_of[i] = list(range(len(sentences), len(sentences) + len(found)))
            sentences.extend(found)
        encoded = self.encoder.encode_texts(sentences)  # every sentence of the group at once
        for i, rows in rows_of.items():
            if any(encoded.truncated[r] for r in rows):
                cut_rows.add(i)
            values[i] = sentence_topk_similarity(
                encoded.vectors[rows], frames[clip_ids[i]], self.topk_fraction
            )
        return len(cut_rows)
