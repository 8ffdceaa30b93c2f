"""Probe video files and sample frames (decord), from local paths or fsspec URLs.

Two samplings per clip, as the authors have them (method.md section 6):

- **CLIP frames** (``clip_frame_indices``): by duration, 4 frames under 5 s, 8 under
  15 s, 16 under 60 s, else 32; all frames when the clip has no more; otherwise
  ``linspace(0, n-1, k)`` truncated to integers. Decoded at full resolution, for CLIP's
  own preprocessing.
- **Policy frames** (``policy_frame_indices``, ``policy_frame_size``): what the VLM sees,
  by qwen-vl-utils' rules through its own functions (``smart_nframes``,
  ``smart_resize``): about ``fps`` frames a second, an even count between ``min_frames``
  and ``max_frames``, indices evenly spread and rounded, each frame resized to about
  ``max_pixels`` with sides multiples of 28.

decord signals unreadable input with its own exception classes (not ``RuntimeError``)
and sometimes with plain ``Exception``; every failure here is wrapped in ``VideoError``,
which carries the URI and a human-readable reason.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The authors' CLIP frames: 4 frames under 5 s, 8 under 15 s, 16 under 60 s, else 32.
PAPER_FRAME_SCHEDULE: tuple[tuple[float | None, int], ...] = (
    (5.0, 4),
    (15.0, 8),
    (60.0, 16),
    (None, 32),
)
CLIP_FRAME_SCHEDULE = PAPER_FRAME_SCHEDULE
# The authors' CLIP pre-processing reads a frame rate of 0 or less as 25 fps.
FALLBACK_FPS = 25.0
# Qwen-VL: frames resized to multiples of 28 pixels (14-pixel patches, merged 2 x 2).
QWEN_FRAME_FACTOR = 28


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


def _open_reader(uri: str | Path, width: int = -1, height: int = -1, threads: int = 0) -> Any:
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
        return decord.VideoReader(
            source, ctx=decord.cpu(0), width=width, height=height, num_threads=threads
        )
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


def clip_frame_indices(
    total_frames: int,
    fps: float,
    schedule: Sequence[tuple[float | None, int]] = CLIP_FRAME_SCHEDULE,
) -> list[int]:
    """The frames the CLIP reward embeds: count by duration (``schedule``), all frames when
    the clip has no more, else ``linspace(0, total - 1, count)`` truncated (first and last
    frame included). A frame rate of 0 or less (or not a number) is read as 25 fps."""
    if total_frames <= 0:
        return []
    if not (math.isfinite(fps) and fps > 0):
        fps = FALLBACK_FPS
    count = frames_for_duration(total_frames / fps, schedule)
    if total_frames <= count:
        return list(range(total_frames))
    return np.linspace(0, total_frames - 1, count, dtype=int).tolist()


def policy_frame_indices(
    total_frames: int, fps: float, *, sample_fps: float, min_frames: int, max_frames: int
) -> list[int]:
    """The frames the VLM sees, by qwen-vl-utils: ``smart_nframes`` picks the count (about
    ``sample_fps`` a second, even, within [min_frames, max_frames] and the clip), then the
    indices are ``linspace(0, total - 1, count)`` rounded, as its decord reader does."""
    import torch
    from qwen_vl_utils.vision_process import smart_nframes

    count = smart_nframes(
        {"fps": sample_fps, "min_frames": min_frames, "max_frames": max_frames},
        total_frames=total_frames,
        video_fps=fps,
    )
    return torch.linspace(0, total_frames - 1, count).round().long().tolist()


def policy_frame_size(
    height: int, width: int, *, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(height, width) of a policy frame: qwen-vl-utils' ``smart_resize`` (sides multiples
    of 28, about ``max_pixels`` at most, aspect kept)."""
    from qwen_vl_utils.vision_process import smart_resize

    return smart_resize(
        height, width, factor=QWEN_FRAME_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels
    )


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames resized as qwen-vl-utils resizes video (bicubic,
    antialiased), rounded back to uint8."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    if frames.shape[1:3] == (height, width):
        return frames
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    resized = tvf.resize(
        video, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclass(frozen=True)
class ClipSamples:
    """A clip decoded for both uses: the policy's frames (resized) and CLIP's (full size)."""

    policy_frames: np.ndarray
    policy_indices: list[int]
    clip_frames: np.ndarray
    clip_indices: list[int]
    info: VideoInfo


def sample_clip(
    uri: str | Path,
    *,
    sample_fps: float,
    min_frames: int,
    max_frames: int,
    min_pixels: int,
    max_pixels: int,
    clip_schedule: Sequence[tuple[float | None, int]] = CLIP_FRAME_SCHEDULE,
    threads: int = 0,
) -> ClipSamples:
    """Decode a clip's policy frames and CLIP frames (one reader, full resolution).
    ``threads``: decoder threads (0: the decoder's choice; a worker gives its share)."""
    reader = _open_reader(uri, threads=threads)
    try:
        info = _info(str(uri), reader)
        try:
            policy = policy_frame_indices(
                info.num_frames,
                info.fps,
                sample_fps=sample_fps,
                min_frames=min_frames,
                max_frames=max_frames,
            )
        except ValueError as exc:  # qwen-vl-utils: too few frames for an even count
            raise VideoError(str(uri), f"cannot sample policy frames: {exc}") from None
        height, width = policy_frame_size(
            info.height, info.width, min_pixels=min_pixels, max_pixels=max_pixels
        )
        policy_frames = resize_frames(reader.get_batch(policy).asnumpy(), height, width)
        clip = clip_frame_indices(info.num_frames, info.fps, clip_schedule)
        clip_frames = reader.get_batch(clip).asnumpy()
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(str(uri), f"cannot decode frames: {exc}") from None
    return ClipSamples(policy_frames, policy, clip_frames, clip, info)


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

    def pick(info: VideoInfo) -> list[int]:
        wanted = count if count is not None else frames_for_duration(info.duration_s, schedule)
        return uniform_indices(info.num_frames, wanted)

    return read_frames(uri, pick, size)


def read_frames(
    uri: str | Path,
    pick: Callable[[VideoInfo], Sequence[int]],
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[int], VideoInfo]:
    """Decode the frames ``pick(info)`` names (indices into the clip) as a ``(T, H, W,
    3)`` uint8 array; ``size`` = (width, height) makes decord resize while decoding."""
    width, height = size if size else (-1, -1)
    reader = _open_reader(uri, width=width, height=height)
    try:
        info = _info(str(uri), reader)
        indices = [int(i) for i in pick(info)]
        frames = reader.get_batch(indices).asnumpy()
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(str(uri), f"cannot decode frames: {exc}") from None
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(str(uri), f"unexpected frame array shape {frames.shape}")
    return frames, indices, info
