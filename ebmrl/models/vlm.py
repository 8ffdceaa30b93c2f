"""Video chat inputs and generation for Qwen-VL-style models (real or tiny).

Frames are decoded by ``ebmrl.video`` and passed to the processor as ``(T, H, W, 3)``
arrays with ``do_sample_frames=False``: the processor then builds real video features
(``pixel_values_videos``, ``video_grid_thw``), not a stack of images, and needs no
video decoding library of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

VISION_PAD_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_pad|>")


class ContextOverflow(ValueError):
    """A prompt (with the tokens asked for) that does not fit the model's context."""


def context_length(model: Any, processor: Any) -> int | None:
    """Tokens the model takes, prompt and reply together: the smaller of the tokenizer's
    and the text config's limit (None when neither says)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    config = getattr(model.config, "text_config", None) or model.config
    limits = [
        getattr(tokenizer, "model_max_length", None),
        getattr(config, "max_position_embeddings", None),
    ]
    # Tokenizers without a limit report a huge sentinel (about 1e30).
    known = [int(v) for v in limits if isinstance(v, int) and 0 < v < 10**9]
    return min(known) if known else None


def check_context(prompt_tokens: int, max_new_tokens: int, context: int | None) -> None:
    if context is not None and prompt_tokens + max_new_tokens > context:
        raise ContextOverflow(
            f"the prompt has {prompt_tokens} tokens and {max_new_tokens} more are asked for: "
            f"over the model's context of {context} tokens"
        )


def strip_none_keys(value: Any) -> Any:
    """Drop ``None``-valued keys that ``datasets`` adds when it unifies message structs.

    Left in, ``{"type": "text", "text": ..., "video": None}`` makes Qwen's own chat
    template count a text block as a video.
    """
    if isinstance(value, dict):
        return {k: strip_none_keys(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_none_keys(v) for v in value]
    return value


def video_messages(user_text: str, system: str | None = None) -> list[dict[str, Any]]:
    """A one-turn conversation: optional system prompt, then the clip and the user text."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append(
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text}]}
    )
    return messages


def encode(
    processor: Any,
    conversations: Sequence[list[dict[str, Any]]],
    videos: Sequence[np.ndarray] | None,
    *,
    add_generation_prompt: bool = True,
    padding_side: str = "left",
):
    """Tokenize a batch of conversations with one clip each into model inputs."""
    texts = [
        processor.apply_chat_template(
            list(conv), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        for conv in conversations
    ]
    return encode_texts(processor, texts, videos, padding_side=padding_side)


def encode_texts(
    processor: Any,
    texts: Sequence[str],
    videos: Sequence[np.ndarray] | None,
    *,
    padding_side: str = "left",
):
    """Model inputs for texts already in the chat layout, each with at most one clip (its
    frames as chosen by the frames stage: the processor does not resample them)."""
    tokenizer = processor.tokenizer
    previous = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        kwargs: dict[str, Any] = {"text": list(texts), "return_tensors": "pt", "padding": True}
        if videos is not None:
            kwargs["videos"] = [np.asarray(v) for v in videos]
            kwargs["do_sample_frames"] = False
        return processor(**kwargs)
    finally:
        tokenizer.padding_side = previous


def vision_pad_token_ids(processor: Any) -> list[int]:
    """Ids a policy must never sample: a stray pad token breaks the next forward pass."""
    tokenizer = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    vocab = tokenizer.get_vocab()
    return sorted({vocab[t] for t in VISION_PAD_TOKENS if t in vocab})


def generate_text(
    model: Any,
    processor: Any,
    conversations: Sequence[list[dict[str, Any]]],
    videos: Sequence[np.ndarray] | None,
    *,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    max_context: int | None = None,
) -> list[str]:
    """Generate one reply per conversation; returns the decoded new text only.

    ``max_context``: refuse (``ContextOverflow``) a batch whose prompts, video tokens
    included, leave no room for ``max_new_tokens`` in that many tokens.
    """
    import torch

    inputs = encode(processor, conversations, videos)
    check_context(int(inputs["input_ids"].shape[1]), max_new_tokens, max_context)
    inputs = inputs.to(model.device)
    if seed is not None:
        torch.manual_seed(seed)
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            suppress_tokens=vision_pad_token_ids(processor) or None,
            **sampling,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)
