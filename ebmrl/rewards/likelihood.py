"""The PCG reward's scorer over a Hugging Face VLM with real video input.

``VideoLikelihoodScorer(model, processor, frame_store)`` computes, for each
``LikelihoodQuery``, the mean log-probability of the target's tokens in the text
``chat_template(prompt, generation prompt) + prefix + target``, with the clip's frames
(read from the frame store) as real video input. This is the authors' definition: the
whole text is tokenized as one string, and the target's tokens are those beyond the
tokenization of ``chat_template(prompt) + prefix`` (so a token that spans the boundary
counts as the target's, as in their masking). The model is injected, so the GRPO trainer
passes its frozen reference model instead of loading a copy (in eval mode: dropout would
make the scores noisy). It may also be bound after construction (``scorer.model = ref``),
once the trainer that owns it exists.

Queries are scored ``batch_size`` at a time, one forward pass per batch: rows are
left-padded so every target ends at the last position, and only the last
``max target length + 1`` logits are computed (``logits_to_keep``). Each clip's video
goes through the processor once per call, however many rows share it (the G traces and
the baseline of a prompt), and its pad token is expanded in the token ids as the
processor would. Batching gives the numbers of scoring one query at a time through the
processor (tested).

With ``shared_prefix`` (on by default), the queries of one prompt and clip (a group's G
traces and its baseline) share their common leading tokens, the prompt with its video:
that prefix goes through the model once (one vision-tower call for the batch's clips,
one per clip) and each query's own tokens run on its cached keys and values
(``ebmrl.models.shared_prefix``), with the same numbers (tested). A model that cannot
share a prefix is scored as above. A query whose sequence (video tokens
included) is longer than ``max_sequence_tokens`` (the authors: 16,384) is not run and
scores NaN (the PCG reward then gives 0); ``too_long`` counts them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ebmrl.frame_store import FrameStore
from ebmrl.models.vlm import encode_texts, strip_none_keys, video_messages
from ebmrl.rewards.pcg import LikelihoodQuery


def clean_conversation(prompt: Any) -> list[dict[str, Any]]:
    """The prompt as chat messages, without the ``None``-valued keys that ``datasets`` adds
    to content blocks (the Qwen-VL chat templates would count such text blocks as videos)."""
    if isinstance(prompt, str):
        return video_messages(prompt)
    return strip_none_keys(list(prompt))


@dataclass(frozen=True)
class _ClipVideo:
    """A clip's video features, computed once per call, shared by every row of the clip."""

    pixels: Any  # pixel_values_videos of the one video
    grid_thw: Any  # (1, 3)
    second_per_grid_ts: Any  # (1,) or None (Qwen2-VL)
    tokens: int  # the video pad token expands to this many tokens


@dataclass(frozen=True)
class _Prepared:
    """One query as token ids (video expanded) and its number of target tokens;
    ``context`` names the prompt and clip it shares a prefix with."""

    ids: list[int]
    clip_id: str
    target_tokens: int
    context: tuple[str, str] = ("", "")


class VideoLikelihoodScorer:
    """``LikelihoodScorer`` over a Qwen-VL-style model: batched, video-conditioned."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        frame_store: FrameStore,
        batch_size: int = 16,
        max_sequence_tokens: int | None = 16_384,
        shared_prefix: bool = True,
    ):
        if batch_size < 1 or (max_sequence_tokens is not None and max_sequence_tokens < 1):
            raise ValueError("batch_size >= 1 and max_sequence_tokens >= 1 (or None)")
        self.model = model
        self.processor = processor
        self.frame_store = frame_store
        self.batch_size = batch_size
        self.max_sequence_tokens = max_sequence_tokens
        self.shared_prefix = shared_prefix
        self.forward_passes = 0  # scored batches (a shared-prefix batch: prefix + suffix)
        self.too_long = 0
        tokenizer = processor.tokenizer
        self._pad_id = tokenizer.convert_tokens_to_ids(processor.video_token)

    def _ids(self, text: str) -> list[int]:
        return list(self.processor.tokenizer(text)["input_ids"])

    def _clip_video(self, frames: Any) -> _ClipVideo:
        """The processor's own video features of one clip (its pad token alone as text)."""
        out = encode_texts(self.processor, [self.processor.video_token], [frames])
        return _ClipVideo(
            pixels=out["pixel_values_videos"],
            grid_thw=out["video_grid_thw"],
            second_per_grid_ts=out.get("second_per_grid_ts"),
            tokens=int((out["input_ids"][0] == self._pad_id).sum()),
        )

    def _prepare(self, query: LikelihoodQuery, video: _ClipVideo) -> _Prepared:
        prompt = self.processor.apply_chat_template(
            clean_conversation(query.prompt), tokenize=False, add_generation_prompt=True
        )
        context = prompt + query.prefix
        ids = self._ids(context + query.target)  # the whole text, one tokenization
        if ids.count(self._pad_id) != 1:
            raise ValueError(
                f"a PCG query needs exactly one video block in its prompt, got "
                f"{ids.count(self._pad_id)} (clip {query.clip_id!r})"
            )
        target_tokens = len(ids) - len(self._ids(context))
        at = ids.index(self._pad_id)
        expanded = ids[:at] + [self._pad_id] * video.tokens + ids[at + 1 :]
        return _Prepared(expanded, query.clip_id, target_tokens, (query.clip_id, prompt))

    def mean_logprob(self, queries: Sequence[LikelihoodQuery]) -> list[float]:
        videos = {
            clip_id: self._clip_video(self.frame_store.frames(clip_id))
            for clip_id in dict.fromkeys(q.clip_id for q in queries)
        }
        prepared = [self._prepare(q, videos[q.clip_id]) for q in queries]
        scores = [math.nan] * len(queries)
        limit = self.max_sequence_tokens
        todo = []
        for i, p in enumerate(prepared):
            if limit is not None and len(p.ids) > limit:
                self.too_long += 1
            elif p.target_tokens > 0:
                todo.append(i)
        for rows in self._batches(todo, prepared):
            batch = [prepared[i] for i in rows]
            for i, value in zip(rows, self._score(batch, videos), strict=True):
                scores[i] = value
        return scores

    def _sharing(self) -> bool:
        if not self.shared_prefix:
            return False
        from ebmrl.models.shared_prefix import unsupported_reason

        return unsupported_reason(self.model) is None

    def _batches(self, todo: list[int], prepared: list[_Prepared]) -> list[list[int]]:
        """Rows to score together: ``batch_size`` at a time, a prompt's rows kept
        together when prefixes are shared."""
        if not self._sharing():
            return [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        from ebmrl.models.shared_prefix import group_rows, pack_groups

        groups = [[todo[i] for i in g] for g in group_rows([prepared[i].context for i in todo])]
        return [[r for g in batch for r in g] for batch in pack_groups(groups, self.batch_size)]

    def _score(self, batch: Sequence[_Prepared], videos: dict[str, _ClipVideo]) -> list[float]:
        if self._sharing():
            from ebmrl.models.shared_prefix import group_rows

            groups = group_rows([p.context for p in batch])
            if any(len(g) > 1 for g in groups):
                return self._score_shared(batch, groups, videos)
        return self._score_batch(batch, videos)

    def _score_batch(
        self, batch: Sequence[_Prepared], videos: dict[str, _ClipVideo]
    ) -> list[float]:
        import torch

        width = max(len(p.ids) for p in batch)
        pad_id = self.processor.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(batch):
            # Left padding: every target ends at the last position.
            input_ids[i, width - len(p.ids) :] = torch.tensor(p.ids)
            attention_mask[i, width - len(p.ids) :] = 1
        types = torch.tensor(self.processor.create_mm_token_type_ids(input_ids.tolist()))
        types[attention_mask == 0] = 0
        rows = [videos[p.clip_id] for p in batch]
        inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": types,
            "pixel_values_videos": torch.cat([v.pixels for v in rows]),
            "video_grid_thw": torch.cat([v.grid_thw for v in rows]),
        }
        if rows[0].second_per_grid_ts is not None:
            inputs["second_per_grid_ts"] = torch.cat(
                [torch.as_tensor(v.second_per_grid_ts).reshape(-1) for v in rows]
            )
        keep = max(p.target_tokens for p in batch) + 1
        device = self.model.device
        with torch.no_grad():
            logits = self.model(
                **{k: v.to(device) for k, v in inputs.items()}, logits_to_keep=keep
            ).logits  # (B, keep, V): the last `keep` positions
        self.forward_passes += 1
        return _target_scores(logits, input_ids, batch)

    def _score_shared(
        self,
        batch: Sequence[_Prepared],
        groups: list[list[int]],
        videos: dict[str, _ClipVideo],
    ) -> list[float]:
        """One batch with each group's common prefix run once. Layout per row: the
        group's prefix (left-padded), then the row's own tokens (left-padded), so every
        target still ends at the last position."""
        import torch

        from ebmrl.models.shared_prefix import PrefixBatch, forward_shared_prefix

        pad_id = self.processor.tokenizer.pad_token_id or 0
        splits = []
        for g in groups:
            rows = [batch[i] for i in g]
            # The shared tokens, and never a target's predecessor: its logit is wanted.
            split = min(
                _common_prefix(r.ids for r in rows),
                *(len(r.ids) - r.target_tokens - 1 for r in rows),
            )
            last_video = max(i for i, t in enumerate(rows[0].ids) if t == self._pad_id)
            if split <= last_video:
                return self._score_batch(batch, videos)
            splits.append(split)
        order = [i for g in groups for i in g]
        row_groups = [k for k, g in enumerate(groups) for _ in g]
        width = max(splits)
        prefix_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
        prefix_mask = torch.zeros((len(groups), width), dtype=torch.long)
        for k, (g, split) in enumerate(zip(groups, splits, strict=True)):
            prefix_ids[k, width - split :] = torch.tensor(batch[g[0]].ids[:split])
            prefix_mask[k, width - split :] = 1
        tails = [batch[i].ids[splits[k] :] for i, k in zip(order, row_groups, strict=True)]
        tail_width = max(len(t) for t in tails)
        suffix_ids = torch.full((len(order), tail_width), pad_id, dtype=torch.long)
        suffix_mask = torch.zeros((len(order), tail_width), dtype=torch.long)
        for r, tail in enumerate(tails):
            suffix_ids[r, tail_width - len(tail) :] = torch.tensor(tail)
            suffix_mask[r, tail_width - len(tail) :] = 1
        clips = [videos[batch[g[0]].clip_id] for g in groups]
        video: dict[str, Any] = {
            "pixel_values_videos": torch.cat([v.pixels for v in clips]),
            "video_grid_thw": torch.cat([v.grid_thw for v in clips]),
        }
        if clips[0].second_per_grid_ts is not None:
            video["second_per_grid_ts"] = torch.cat(
                [torch.as_tensor(v.second_per_grid_ts).reshape(-1) for v in clips]
            )
        device = self.model.device
        prefix = PrefixBatch(
            prefix_ids.to(device),
            prefix_mask.to(device),
            {k: v.to(device) for k, v in video.items()},
        )
        ordered = [batch[i] for i in order]
        keep = max(p.target_tokens for p in ordered) + 1
        with torch.no_grad():
            logits = forward_shared_prefix(
                self.model,
                prefix,
                suffix_ids.to(device),
                suffix_mask.to(device),
                torch.tensor(row_groups, device=device),
                logits_to_keep=keep,
            ).logits
        self.forward_passes += 1
        scores = [0.0] * len(batch)
        for i, value in zip(order, _target_scores(logits, suffix_ids, ordered), strict=True):
            scores[i] = value
        return scores


def _common_prefix(sequences) -> int:
    """Length of the longest common leading run of token ids."""
    sequences = list(sequences)
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for other in sequences[1:]:
        k = 0
        while k < n and other[k] == first[k]:
            k += 1
        n = k
    return n


def _target_scores(logits: Any, input_ids: Any, batch: Sequence[_Prepared]) -> list[float]:
    """Mean log-probability of each row's target, its tokens the last of ``input_ids``,
    from the last ``keep`` positions' logits ``(B, keep, V)``."""
    keep = logits.shape[1]
    scores = []
    for i, p in enumerate(batch):
        n = p.target_tokens
        # Logit at position j predicts token j + 1: the n target tokens (the last n
        # positions) are predicted by kept positions keep-n-1 .. keep-2.
        step_logits = logits[i, keep - n - 1 : keep - 1].float()
        targets = input_ids[i, -n:].to(step_logits.device)
        logp = step_logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        scores.append(float(logp.mean()))
    return scores
