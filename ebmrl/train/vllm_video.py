"""Video for vLLM rollouts (``grpo.use_vllm``), colocated with the trainer.

TRL 1.16's vLLM path builds one request per row from the token ids we tokenized
(``{"prompt_token_ids": ids}``) and attaches images only, so a video prompt would reach
vLLM with its ``<|video_pad|>`` placeholders but no frames. ``VideoLLM`` wraps TRL's
``vllm.LLM`` and adds each row's clip to its request as ``multi_modal_data["video"]``;
everything else (weight sync, sleep mode, sampling parameters, log-probs) stays TRL's.

The frames are the ones the trainer's log-prob passes see (already sampled by the frames
stage), handed over with the metadata vLLM's Qwen2.5-VL processor requires. Its ``fps`` is
the one our Hugging Face processor used (``temporal_patch_size / second_per_grid_ts``),
so the M-RoPE time positions of sampling and training agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# vLLM clamps logit biases to [-100, 100]; a token 100 nats down is never sampled in practice.
SUPPRESS_BIAS = -100.0


class VideoRolloutError(RuntimeError):
    """The vLLM rollout was asked to generate without one clip per prompt."""


def video_item(frames: np.ndarray, fps: float) -> tuple[np.ndarray, dict[str, Any]]:
    """A clip as vLLM's video input: ``(T, H, W, 3)`` uint8 frames plus their metadata.

    ``do_sample_frames`` is off: the frames stage already chose them, and resampling would
    change the number of video tokens behind the prompt ids we send.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {tuple(frames.shape)}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    count = int(frames.shape[0])
    metadata = {
        "fps": float(fps),
        "duration": count / float(fps),
        "total_num_frames": count,
        "frames_indices": list(range(count)),
        "video_backend": "ebmrl",
        "do_sample_frames": False,
    }
    return frames, metadata


def with_videos(
    requests: Sequence[dict[str, Any]], videos: Sequence[tuple[np.ndarray, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Each vLLM request with its row's clip; requests and clips must pair one to one."""
    if len(requests) != len(videos):
        raise VideoRolloutError(
            f"{len(requests)} vLLM requests but {len(videos)} clips: every prompt row "
            "needs its own clip (tensor-parallel vLLM gathers other ranks' prompts, "
            "which is not supported with video)"
        )
    out = []
    for request, video in zip(requests, videos, strict=True):
        if "multi_modal_data" in request:
            raise VideoRolloutError(
                "a vLLM request already carries images; ebmrl prompts hold one video"
            )
        out.append({**request, "multi_modal_data": {"video": video}})
    return out


class VideoLLM:
    """``vllm.LLM`` whose ``generate`` adds the pending clips to TRL's token prompts.

    Set ``videos`` (one ``video_item`` per request, in request order) right before TRL
    generates and clear it after; generating with no videos set is an error, never a
    blind rollout.
    """

    def __init__(self, llm: Any):
        self.llm = llm
        self.videos: list[tuple[np.ndarray, dict[str, Any]]] | None = None

    def generate(self, prompts: Sequence[dict[str, Any]], *args: Any, **kwargs: Any):
        if self.videos is None:
            raise VideoRolloutError("vLLM generate called with no clips set for its prompts")
        return self.llm.generate(with_videos(prompts, self.videos), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # sleep/wake_up, collective_rpc (weight sync), reset_prefix_cache, ...
        return getattr(self.llm, name)


def vllm_unavailable_reason() -> str | None:
    """Why ``grpo.use_vllm`` cannot run on this machine, or None when it can."""
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        return (
            "vLLM is not installed; install it on a CUDA machine (see the README, "
            "'vLLM rollouts'), or set grpo.use_vllm: false"
        )
    if not torch.cuda.is_available():
        return "vLLM rollouts need a CUDA GPU and none is visible; set grpo.use_vllm: false"
    return None


def check_vllm_settings(mode: str, tensor_parallel_size: int) -> None:
    """Refuse vLLM layouts whose requests cannot carry our clips."""
    if mode != "colocate":
        raise ValueError(
            f"grpo.use_vllm: vllm_mode {mode!r} is not supported with video: TRL's vLLM server "
            "client sends images only. ebmrl runs vLLM colocated with the trainer."
        )
    if tensor_parallel_size != 1:
        raise ValueError(
            f"grpo.use_vllm: vllm_tensor_parallel_size {tensor_parallel_size} is not supported "
            "with video (each rank's clips stay on that rank); use 1"
        )


def prepare_colocated_engine(generation: Any, suppressed_token_ids: Sequence[int]) -> VideoLLM:
    """Make TRL's colocated ``VLLMGeneration`` video-ready; returns the wrapped engine.

    Refuses unsupported layouts, wraps its ``llm`` in ``VideoLLM`` and keeps the given
    tokens (the vision pads, which break the next forward pass if sampled) out of
    sampling: vLLM has no ``suppress_tokens``, a -100 logit bias does the same.
    """
    check_vllm_settings(generation.mode, generation.tensor_parallel_size)
    engine = generation.llm if isinstance(generation.llm, VideoLLM) else VideoLLM(generation.llm)
    generation.llm = engine
    bias = dict(generation.generation_kwargs.get("logit_bias") or {})
    bias.update({int(token): SUPPRESS_BIAS for token in suppressed_token_ids})
    generation.generation_kwargs["logit_bias"] = bias
    return engine
