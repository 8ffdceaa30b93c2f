"""Where sampled frames and their CLIP embeddings live, computed once per clip.

The ``frames`` stage fills a store; the CLIP reward, the PCG reward, the trainers and the
evaluation read it. Readers only need the small ``FrameStore`` protocol, so tests can use
``MemoryFrameStore`` and production the on-disk store through the same code.

A clip missing from the store is an error that names the clip (``MissingClipError``):
it means the frames stage did not run for it, and scoring it as 0 would silently bias
training.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import numpy as np


class MissingClipError(KeyError):
    """The store has no entry for this clip (did the frames stage run for it?)."""

    def __init__(self, clip_id: str, what: str = "frames"):
        self.clip_id = clip_id
        self.what = what
        super().__init__(clip_id)

    def __str__(self) -> str:
        return (
            f"no {self.what} for clip {self.clip_id!r} in the frame store "
            "(did the frames stage run for this clip?)"
        )


@runtime_checkable
class FrameStore(Protocol):
    def clip_ids(self) -> list[str]:
        """Every clip the store holds."""
        ...

    def frames(self, clip_id: str) -> np.ndarray:
        """Sampled frames of the clip, ``(T, H, W, 3)`` uint8."""
        ...

    def embeddings(self, clip_id: str) -> np.ndarray:
        """CLIP image embeddings of those frames, ``(T, D)`` float32, L2-normalised."""
        ...


class MemoryFrameStore:
    """A dict-backed store (tests, small jobs). Embeddings are normalised on insert."""

    def __init__(self) -> None:
        self._frames: dict[str, np.ndarray] = {}
        self._embeddings: dict[str, np.ndarray] = {}

    def add(
        self, clip_id: str, frames: np.ndarray | None = None, embeddings: np.ndarray | None = None
    ) -> None:
        if frames is not None:
            self._frames[clip_id] = np.asarray(frames)
        if embeddings is not None:
            self._embeddings[clip_id] = l2_normalise(np.asarray(embeddings, dtype=np.float32))

    def clip_ids(self) -> list[str]:
        return sorted(set(self._frames) | set(self._embeddings))

    def frames(self, clip_id: str) -> np.ndarray:
        try:
            return self._frames[clip_id]
        except KeyError:
            raise MissingClipError(clip_id, "frames") from None

    def embeddings(self, clip_id: str) -> np.ndarray:
        try:
            return self._embeddings[clip_id]
        except KeyError:
            raise MissingClipError(clip_id, "frame embeddings") from None


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def require_clips(store: FrameStore, clip_ids: Iterable[str]) -> None:
    """Fail fast, naming every missing clip, before a long job starts."""
    have = set(store.clip_ids())
    missing = sorted({c for c in clip_ids if c not in have})
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise MissingClipError(shown, f"entries ({len(missing)} clips)")
