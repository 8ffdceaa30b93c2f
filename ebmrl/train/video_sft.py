"""CoT-SFT on video: a collator that turns (prompt, completion, clip_id) rows into
Qwen-VL video inputs with the loss on the assistant turn only.

TRL's own vision collator handles images; video needs the clip's frames (from the frame
store) run through the processor as a video, so we hand SFTTrainer this collator and
skip its dataset preparation.
"""

from __future__ import annotations

from typing import Any

import torch

from ebmrl.frame_store import FrameStore
from ebmrl.models.vlm import encode, strip_none_keys

IGNORE_INDEX = -100


class VideoSFTCollator:
    """Collate SFT rows into model inputs; labels cover the assistant completion only.

    The prompt part's length after video expansion is computed from the unexpanded
    prompt tokenization (one ``<|video_pad|>``) plus the video's token count, then checked
    to be an exact prefix of the full sequence, so the mask can never drift silently.
    """

    def __init__(self, processor: Any, frame_store: FrameStore, max_length: int | None = None):
        self.processor = processor
        self.frame_store = frame_store
        self.max_length = max_length
        tokenizer = processor.tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.video_token_id = tokenizer.convert_tokens_to_ids(processor.video_token)
        merge = getattr(processor.video_processor, "merge_size", 2)
        self.merge_area = merge * merge

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        processor = self.processor
        prompts = [strip_none_keys(ex["prompt"]) for ex in examples]
        completions = [strip_none_keys(ex["completion"]) for ex in examples]
        prompt_texts = [
            processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        videos = [self.frame_store.frames(ex["clip_id"]) for ex in examples]
        tokenizer = processor.tokenizer
        batch = encode(
            processor,
            [p + c for p, c in zip(prompts, completions, strict=True)],
            videos,
            add_generation_prompt=False,
            padding_side="right",
        )
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        video_tokens = (batch["video_grid_thw"].prod(dim=-1) // self.merge_area).tolist()
        for row, (prompt_text, n_video) in enumerate(zip(prompt_texts, video_tokens, strict=True)):
            prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            if prompt_ids.count(self.video_token_id) != 1:
                raise ValueError(f"row {row}: the prompt must contain exactly one video block")
            prompt_len = len(prompt_ids) - 1 + n_video
            expanded = batch["input_ids"][row, :prompt_len]
            expected_text = [t for t in prompt_ids if t != self.video_token_id]
            got_text = [t for t in expanded.tolist() if t != self.video_token_id]
            if got_text != expected_text:
                raise RuntimeError(
                    f"row {row}: prompt tokens are not a prefix of the full sequence"
                )
            labels[row, :prompt_len] = IGNORE_INDEX
        batch["labels"] = labels
        if self.max_length is not None and batch["input_ids"].size(1) > self.max_length:
            # Truncating would cut video tokens or the answer; refuse rather than train on a wrong mask.
            raise ValueError(
                f"a batch is {batch['input_ids'].size(1)} tokens, over max_length={self.max_length}: "
                "raise sft.max_length or use fewer/smaller frames"
            )
        return dict(batch)
