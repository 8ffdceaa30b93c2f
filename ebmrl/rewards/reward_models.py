"""Build the rewards' injected models from params.yaml (the GRPO stage calls these).

Each function loads one model named in ``params.models`` / ``params.rewards`` by hub id or
local folder. The PCG scorer is not built here: it wraps the trainer's own frozen
reference model (``VideoLikelihoodScorer(ref_model, processor, frame_store, ...)``), see
``pcg_scorer``.
"""

from __future__ import annotations

from typing import Any

from ebmrl.config import Params
from ebmrl.frame_store import FrameStore
from ebmrl.rewards.answer import make_bert_scorer
from ebmrl.rewards.clip import OpenClipEncoder
from ebmrl.rewards.embed import HFSentenceEmbedder
from ebmrl.rewards.likelihood import VideoLikelihoodScorer


def clip_encoder(params: Params) -> OpenClipEncoder:
    models = params.models
    return OpenClipEncoder.load(
        models.clip, pretrained=models.clip_pretrained, device=models.device
    )


def answer_scorer(params: Params) -> Any:
    models = params.models
    return make_bert_scorer(
        models.text_encoder,
        models.text_encoder_layers,
        device=models.device,
        batch_size=params.rewards.answer.batch_size,
    )


def sentence_embedder(params: Params) -> HFSentenceEmbedder | None:
    """The leak filter's sentence encoder, or None when the filter is off."""
    leak = params.rewards.pcg.leak_filter
    if not leak.enabled:
        return None
    return HFSentenceEmbedder.load(leak.model, device=params.models.device)


def pcg_scorer(
    params: Params, model: Any, processor: Any, frame_store: FrameStore
) -> VideoLikelihoodScorer:
    """The PCG scorer over an existing (reference) model, sized by ``rewards.pcg``, its
    prefixes shared as ``grpo.shared_prefix`` says."""
    pcg = params.rewards.pcg
    return VideoLikelihoodScorer(
        model,
        processor,
        frame_store,
        batch_size=pcg.batch_size,
        max_sequence_tokens=pcg.max_sequence_tokens,
        shared_prefix=params.grpo.shared_prefix,
    )
