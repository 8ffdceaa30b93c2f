"""Probe video files and sample frames uniformly (decord), from local paths or fsspec URLs.

decord signals unreadable input with its own exception classes (not ``RuntimeError``)
and sometimes with plain ``Exception``; every failure here is wrapped in ``VideoError``,
which carries the URI and a human-readable reason.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Paper setting (method.md): 4 frames under 5 s, 8 under 15 s, 16 under 60 s, else 32.
PAPER_FRAME_SCHEDULE: tuple[tuple[float | None, int], ...] = (
    (5.0, 4),
    (15.0, 8),
    (60.0, 16),
    (None, 32),
)


class VideoError(Exception):
    """A video cannot be opened or decoded. ``reason`` is short and human-readable."""

    def __init__(self, uri: str, reason: str):
        self.uri = uri
        self.reason = reason
        super().__init__(f"{uri}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    fps: float
    num_frames: int
    width: int
    height: int


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _open_reader(uri: str | Path, width: int = -1, height: int = -1) -> Any:
    import decord

    uri = str(uri)
    try:
        if is_remote(uri):
            import fsspec

            with fsspec.open(uri, "rb") as handle:
                payload = handle.read()
            if not payload:
                raise VideoError(uri, "empty file (0 bytes)")
            source: Any = io.BytesIO(payload)
        else:
            path = Path(uri.removeprefix("file://"))
            if not path.exists():
                raise VideoError(uri, "file not found")
            if path.is_dir():
                raise VideoError(uri, "is a directory, not a video file")
            if path.stat().st_size == 0:
                raise VideoError(uri, "empty file (0 bytes)")
            source = str(path)
        return decord.VideoReader(source, ctx=decord.cpu(0), width=width, height=height)
    except VideoError:
        raise
    except FileNotFoundError:
        raise VideoError(uri, "file not found") from None
    except Exception as exc:  # decord raises DECORDError and friends, not RuntimeError
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VideoError(uri, f"cannot decode video: {message[:300]}") from None


def _info(uri: str, reader: Any) -> VideoInfo:
    num_frames = len(reader)
    fps = float(reader.get_avg_fps() or 0.0)
    if num_frames <= 0:
        raise VideoError(uri, "no video frames")
    if not math.isfinite(fps) or fps <= 0:
        raise VideoError(uri, f"invalid frame rate {fps!r}")
    height, width = reader[0].shape[:2]
    return VideoInfo(
        duration_s=num_frames / fps,
        fps=fps,
        num_frames=num_frames,
        width=int(width),
        height=int(height),
    )


def probe(uri: str | Path) -> VideoInfo:
    """Duration, frame rate, frame count and size; raises ``VideoError`` if unreadable.

    Decodes the first frame as well, so a file whose header parses but whose stream does
    not decode is caught here rather than later in the pipeline.
    """
    reader = _open_reader(uri)
    try:
        return _info(str(uri), reader)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(str(uri), f"cannot decode video: {exc}") from None


def frames_for_duration(
    duration_s: float, schedule: Sequence[tuple[float | None, int]] = PAPER_FRAME_SCHEDULE
) -> int:
    """Number of frames to sample for a clip of this length (first step whose bound exceeds it)."""
    for bound, frames in schedule:
        if bound is None or duration_s < bound:
            return frames
    return schedule[-1][1]


def uniform_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``num_frames`` (centre of each segment).

    Shorter clips than ``count`` repeat frames so the output length is always ``count``.
    """
    if num_frames <= 0 or count <= 0:
        return []
    step = num_frames / count
    return [min(num_frames - 1, int(step * i + step / 2)) for i in range(count)]


def spread_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``frames`` (``(T, H, W, 3)``), evenly spread over the clip."""
    frames = np.asarray(frames)
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    if len(frames) <= count:
        return frames
    return frames[uniform_indices(len(frames), count)]


def sample_frames(
    uri: str | Path,
    count: int | None = None,
    schedule: Sequence[tuple[float | None, int]] = PAPER_FRAME_SCHEDULE,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[int], VideoInfo]:
    """Decode ``count`` uniformly spaced frames as a ``(T, H, W, 3)`` uint8 array.

    ``count=None`` picks the count from the clip duration and ``schedule``. ``size`` =
    (width, height) makes decord resize while decoding. Returns the frames, their
    indices and the clip's ``VideoInfo``.
    """
    width, height = size if size else (-1, -1)
    reader = _open_reader(uri, width=width, height=height)
    try:
        info = _info(str(uri), reader)
        if count is None:
            count = frames_for_duration(info.duration_s, schedule)
        indices = uniform_indices(info.num_frames, count)
        frames = reader.get_batch(indices).asnumpy()
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(str(uri), f"cannot decode frames: {exc}") from None
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(str(uri), f"unexpected frame array shape {frames.shape}")
    return frames, indices, info
