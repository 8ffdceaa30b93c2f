"""Build the rewards' injected models from their params.yaml sections (the GRPO stage
calls these through ``ebmrl.train.grpo.build_rewards``).

Each function loads one model named in ``models`` (``ModelsSection``) or a ``rewards``
subsection by hub id or local folder, and reads only the sections it is given. The PCG
scorer is not loaded here: it wraps the trainer's own frozen reference model
(``VideoLikelihoodScorer(ref_model, processor, frame_store, ...)``), see ``pcg_scorer``.
"""

from __future__ import annotations

from typing import Any

from ebmrl.config import (
    AnswerRewardSection,
    LeakFilterSection,
    ModelsSection,
    PcgRewardSection,
)
from ebmrl.frame_store import FrameStore
from ebmrl.rewards.answer import make_bert_scorer
from ebmrl.rewards.clip import OpenClipEncoder
from ebmrl.rewards.embed import HFSentenceEmbedder
from ebmrl.rewards.likelihood import VideoLikelihoodScorer


def clip_encoder(models: ModelsSection) -> OpenClipEncoder:
    """``models.clip`` (with ``clip_pretrained``) on ``models.device``."""
    return OpenClipEncoder.load(
        models.clip, pretrained=models.clip_pretrained, device=models.device
    )


def answer_scorer(models: ModelsSection, answer: AnswerRewardSection) -> Any:
    """The BERTScorer over ``models.text_encoder`` (its first ``text_encoder_layers``
    layers), batched as ``rewards.answer`` says."""
    return make_bert_scorer(
        models.text_encoder,
        models.text_encoder_layers,
        device=models.device,
        batch_size=answer.batch_size,
    )


def sentence_embedder(leak_filter: LeakFilterSection, device: str) -> HFSentenceEmbedder | None:
    """The leak filter's sentence encoder (``rewards.pcg.leak_filter``) on ``device``, or
    None when the filter is off."""
    if not leak_filter.enabled:
        return None
    return HFSentenceEmbedder.load(leak_filter.model, device=device)


def pcg_scorer(
    pcg: PcgRewardSection,
    model: Any,
    processor: Any,
    frame_store: FrameStore,
    *,
    shared_prefix: bool,
) -> VideoLikelihoodScorer:
    """The PCG scorer over an existing (reference) model, sized by ``rewards.pcg``, its
    prefixes shared when ``shared_prefix`` (``grpo.shared_prefix``)."""
    return VideoLikelihoodScorer(
        model,
        processor,
        frame_store,
        batch_size=pcg.batch_size,
        max_sequence_tokens=pcg.max_sequence_tokens,
        shared_prefix=shared_prefix,
    )
