"""Sentence embeddings over a Hugging Face encoder (mean pooling), for the PCG leak filter.

Any ``embed(texts) -> (N, D)`` callable works where a sentence embedder is injected; this
is the one we ship. It loads a BERT-like encoder by hub id or folder (the tiny text
encoder in tests, e.g. ``sentence-transformers/all-MiniLM-L6-v2`` at paper scale) and
mean-pools the last hidden state over real tokens, which is how the sentence-transformers
MiniLM models are defined. Rows are L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ebmrl.frame_store import l2_normalise


class HFSentenceEmbedder:
    """``embed(texts) -> np.ndarray (N, D)``: mean-pooled, L2-normalised sentence vectors."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str = "cpu",
        max_length: int = 256,
        batch_size: int = 64,
    ):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def load(cls, id_or_path: str, device: str = "cpu", **kwargs: Any) -> HFSentenceEmbedder:
        from transformers import AutoModel, AutoTokenizer

        from ebmrl.models.loading import ModelLoadError

        try:
            tokenizer = AutoTokenizer.from_pretrained(id_or_path)
            model = AutoModel.from_pretrained(id_or_path)
        except Exception as exc:
            raise ModelLoadError(f"cannot load sentence encoder {id_or_path!r}: {exc}") from exc
        return cls(model, tokenizer, device=device, **kwargs)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state  # (B, L, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                chunks.append(pooled.float().cpu().numpy())
        return l2_normalise(np.concatenate(chunks))
