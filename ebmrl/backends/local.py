"""A local transformers VLM (Qwen-VL family) as a backend: the model runs in this process.

Frames go to the model as one video (``(T, H, W, 3)``), the way it is trained, not as a
list of images. One model serves one request at a time (a lock): concurrent callers queue.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ebmrl.backends.base import ChatRequest, Message, PermanentBackendError
from ebmrl.models.identity import model_fingerprint


def to_conversation(messages: tuple[Message, ...], with_video: bool) -> list[dict[str, Any]]:
    """Our messages as Qwen-VL chat blocks; the video block opens the last user turn."""
    conversation: list[dict[str, Any]] = []
    last_user = max(i for i, m in enumerate(messages) if m.role == "user")
    for index, message in enumerate(messages):
        blocks: list[dict[str, Any]] = []
        if with_video and index == last_user:
            blocks.append({"type": "video"})
        blocks.append({"type": "text", "text": message.content})
        conversation.append({"role": message.role, "content": blocks})
    return conversation


def min_video_frames(frames: np.ndarray, temporal_patch: int = 2) -> np.ndarray:
    """Qwen-VL merges frames in pairs: a single frame is repeated to make one pair."""
    if len(frames) < temporal_patch:
        frames = np.concatenate([frames] * temporal_patch)[:temporal_patch]
    return frames


class LocalVLMBackend:
    """Generates with ``ebmrl.models.load_vlm`` + ``ebmrl.models.vlm.generate_text``."""

    max_concurrency = 1

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        attn_implementation: str = "sdpa",
        loaded: tuple[Any, Any] | None = None,
        torch_threads: int | None = None,
    ):
        self.name = str(model)
        self.model_id = model_fingerprint(self.name)
        self._load_args = {
            "dtype": dtype,
            "device": device,
            "attn_implementation": attn_implementation,
        }
        # Loaded on first use: a rerun whose answers are all cached never pays for it.
        self._loaded = loaded
        self._torch_threads = torch_threads
        self._lock = threading.Lock()
        self._limits: tuple[int | None, int] | None = None  # (context, longest token)

    def _model_and_processor(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from ebmrl.models import load_vlm

            if self._torch_threads:
                import torch

                # Process-wide: a stage runs one model; oversubscribed CPU threads
                # slow a small model down many times over on a busy machine.
                torch.set_num_threads(self._torch_threads)

            self._loaded = load_vlm(self.name, **self._load_args)
        return self._loaded

    def load(self) -> None:
        """Load the model now rather than on the first request (fails if it cannot)."""
        with self._lock:
            self._context_limits()

    def _context_limits(self) -> tuple[int | None, int]:
        """The model's context in tokens and the longest token's length in characters."""
        if self._limits is None:
            from ebmrl.models.vlm import context_length

            model, processor = self._model_and_processor()
            vocab = processor.tokenizer.get_vocab()
            self._limits = (context_length(model, processor), max(map(len, vocab), default=1))
        return self._limits

    def _refuse_a_prompt_surely_too_long(self, request: ChatRequest) -> None:
        """No token is longer than the longest in the vocabulary, so the text alone sets a
        lower bound on the prompt's tokens: a prompt far over the context (megabytes of
        text) is refused without being tokenized."""
        context, longest = self._context_limits()
        chars = sum(len(m.content) for m in request.messages)
        at_least = -(-chars // max(1, longest))
        if context is not None and at_least + request.max_tokens > context:
            raise PermanentBackendError(
                f"{self.name}: the prompt has at least {at_least} tokens ({chars} characters) "
                f"and {request.max_tokens} more are asked for: over the model's context of "
                f"{context} tokens"
            )

    def generate(self, request: ChatRequest) -> str:
        from ebmrl.models.vlm import generate_text

        video = None
        if request.frames is not None and len(request.frames):
            video = min_video_frames(np.asarray(request.frames))
        conversation = to_conversation(request.messages, with_video=video is not None)
        with self._lock:
            model, processor = self._model_and_processor()
            self._refuse_a_prompt_surely_too_long(request)
            try:
                texts = generate_text(
                    model,
                    processor,
                    [conversation],
                    None if video is None else [video],
                    max_new_tokens=request.max_tokens,
                    do_sample=request.temperature > 0,
                    temperature=request.temperature or 1.0,
                    top_p=request.top_p,
                    seed=request.seed,
                    max_context=self._context_limits()[0],
                )
            except (ValueError, TypeError) as exc:
                raise PermanentBackendError(f"{self.name}: cannot generate: {exc}") from exc
        return texts[0]

    def close(self) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        with self._lock:
            _, processor = self._model_and_processor()
        return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
