"""The PCG reward's scorer over a Hugging Face VLM with real video input.

``VideoLikelihoodScorer(model, processor, frame_store)`` computes, for each
``LikelihoodQuery``, the mean log-probability of the target's tokens after
``chat_template(prompt, generation prompt) + prefix``, with the clip's frames (read from
the frame store) as real video input (``pixel_values_videos``, ``video_grid_thw``) built
by ``ebmrl.models.vlm.encode``. The model is injected, so the GRPO trainer passes its
frozen reference model instead of loading a copy (in eval mode: dropout would make the
scores noisy). It may also be bound after construction (``scorer.model = ref``), once the
trainer that owns it exists.

Queries are scored ``batch_size`` at a time, one forward pass per batch. Prompt, prefix
and target are tokenized separately and concatenated, so the target's tokens are known
exactly; rows are left-padded so every target ends at the last position, and only the
last ``max target length + 1`` logits are computed (``logits_to_keep``).

Guards against pathological input: a prefix longer than ``max_prefix_tokens`` keeps its
first and last halves (the ``<perception>`` opening and the ``</think>\\n<answer>`` end
survive; ``prefix_cuts`` counts these), and the target is cut to ``max_target_tokens``
(the same cut for the trace and the baseline, so their difference stays comparable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ebmrl.frame_store import FrameStore
from ebmrl.models.vlm import encode, strip_none_keys, video_messages
from ebmrl.rewards.pcg import LikelihoodQuery


def clean_conversation(prompt: Any) -> list[dict[str, Any]]:
    """The prompt as chat messages, without the ``None``-valued keys that ``datasets`` adds
    to content blocks (the Qwen-VL chat templates would count such text blocks as videos)."""
    if isinstance(prompt, str):
        return video_messages(prompt)
    return strip_none_keys(list(prompt))


def middle_cut(ids: list[int], limit: int) -> tuple[list[int], bool]:
    """Keep the first and last halves of ``ids`` when it is longer than ``limit``."""
    if len(ids) <= limit:
        return ids, False
    head = limit // 2
    return ids[:head] + ids[len(ids) - (limit - head) :], True


class VideoLikelihoodScorer:
    """``LikelihoodScorer`` over a Qwen-VL-style model: batched, video-conditioned."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        frame_store: FrameStore,
        batch_size: int = 16,
        max_prefix_tokens: int = 2048,
        max_target_tokens: int = 256,
    ):
        if batch_size < 1 or max_prefix_tokens < 2 or max_target_tokens < 1:
            raise ValueError("batch_size >= 1, max_prefix_tokens >= 2, max_target_tokens >= 1")
        self.model = model
        self.processor = processor
        self.frame_store = frame_store
        self.batch_size = batch_size
        self.max_prefix_tokens = max_prefix_tokens
        self.max_target_tokens = max_target_tokens
        self.forward_passes = 0
        self.prefix_cuts = 0

    def _token_ids(self, text: str) -> list[int]:
        return list(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def mean_logprob(self, queries: Sequence[LikelihoodQuery]) -> list[float]:
        frames = {q.clip_id: self.frame_store.frames(q.clip_id) for q in queries}
        scores: list[float] = []
        for start in range(0, len(queries), self.batch_size):
            scores += self._score_batch(queries[start : start + self.batch_size], frames)
        return scores

    def _score_batch(self, queries: Sequence[LikelihoodQuery], frames: dict) -> list[float]:
        import torch

        inputs = encode(
            self.processor,
            [clean_conversation(q.prompt) for q in queries],
            [frames[q.clip_id] for q in queries],
            add_generation_prompt=True,
            padding_side="left",
        )
        real = inputs["attention_mask"].bool()
        types = inputs.get("mm_token_type_ids")
        rows, row_types, target_lengths = [], [], []
        for i, query in enumerate(queries):
            prefix, was_cut = middle_cut(self._token_ids(query.prefix), self.max_prefix_tokens)
            self.prefix_cuts += int(was_cut)
            target = self._token_ids(query.target)[: self.max_target_tokens]
            appended = torch.tensor(prefix + target, dtype=inputs["input_ids"].dtype)
            rows.append(torch.cat([inputs["input_ids"][i][real[i]], appended]))
            if types is not None:
                # Appended text is text (type 0): M-RoPE positions follow the vision tokens.
                row_types.append(torch.cat([types[i][real[i]], torch.zeros_like(appended)]))
            target_lengths.append(len(target))
        keep = max(target_lengths) + 1
        if keep == 1:
            return [math.nan] * len(queries)  # no target has a token to score

        width = max(len(r) for r in rows)
        pad_id = self.processor.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=rows[0].dtype)
        attention_mask = torch.zeros((len(rows), width), dtype=inputs["attention_mask"].dtype)
        mm_types = torch.zeros((len(rows), width), dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = row  # left padding: targets end together
            attention_mask[i, width - len(row) :] = 1
            if types is not None:
                mm_types[i, width - len(row) :] = row_types[i]
        extra = {
            k: v
            for k, v in inputs.items()
            if k not in ("input_ids", "attention_mask", "mm_token_type_ids")
        }
        if types is not None:
            extra["mm_token_type_ids"] = mm_types
        device = self.model.device
        with torch.no_grad():
            logits = self.model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                logits_to_keep=keep,
                **{k: v.to(device) if hasattr(v, "to") else v for k, v in extra.items()},
            ).logits  # (B, keep, V): positions width-keep .. width-1
        self.forward_passes += 1
        scores = []
        for i, n in enumerate(target_lengths):
            if n == 0:
                scores.append(math.nan)
                continue
            # Logit at position j predicts token j + 1: the n target tokens (the last n
            # positions) are predicted by kept positions keep-n-1 .. keep-2.
            step_logits = logits[i, keep - n - 1 : keep - 1].float()
            targets = rows[i][-n:].to(step_logits.device)
            logp = step_logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
            scores.append(float(logp.mean()))
        return scores
