"""One small interface for text and vision generation: chat messages (+ frames) in, text out.

A ``ChatRequest`` is plain data (messages, optional frames of one clip, sampling
settings); a ``Backend`` turns it into text. Errors are split in two kinds so callers can
retry the right ones: ``TransientBackendError`` (overload, rate limit, timeout, broken
connection: worth retrying) and ``PermanentBackendError`` (a bad request, a missing model:
retrying cannot help).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class BackendError(RuntimeError):
    """A generation failed; ``retryable`` says whether trying again may succeed."""

    retryable = False


class TransientBackendError(BackendError):
    """Overload (429/5xx), timeout or connection failure: retry with backoff."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentBackendError(BackendError):
    """A request the backend refuses (4xx other than 429), or a malformed reply."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"message content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class ChatRequest:
    """What to generate. ``frames`` (``(T, H, W, 3)`` uint8) go with the last user message."""

    messages: tuple[Message, ...]
    frames: np.ndarray | None = field(default=None, compare=False)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # Ask for a JSON object reply (OpenAI ``response_format``); backends that cannot
    # enforce it still receive the instruction through the prompt.
    json_mode: bool = False

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("a chat request needs at least one message")
        if self.messages[-1].role != "user":
            raise ValueError("the last message of a chat request must be the user's")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.frames is not None:
            frames = np.asarray(self.frames)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(
                    f"frames must be a (T, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}"
                )

    @classmethod
    def simple(cls, user: str, system: str | None = None, **settings: Any) -> ChatRequest:
        messages = ([Message("system", system)] if system else []) + [Message("user", user)]
        return cls(messages=tuple(messages), **settings)

    def fingerprint(self) -> str:
        """Content hash of everything that shapes the reply (messages, frames, settings)."""
        digest = hashlib.sha256()
        payload = {
            "messages": [[m.role, m.content] for m in self.messages],
            "settings": [self.max_tokens, self.temperature, self.top_p, self.seed, self.json_mode],
        }
        digest.update(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        if self.frames is not None:
            frames = np.ascontiguousarray(self.frames)
            digest.update(str(frames.shape).encode())
            digest.update(frames.tobytes())
        return digest.hexdigest()


@runtime_checkable
class Backend(Protocol):
    """Generates text for chat requests. Implementations must be safe to call from threads."""

    #: Identifies the model (and its weights, where known): part of every cache key.
    model_id: str
    #: Requests worth sending at once (a local model on one device: 1).
    max_concurrency: int | None

    def generate(self, request: ChatRequest) -> str: ...

    def close(self) -> None: ...
