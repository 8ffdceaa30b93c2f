"""Frames for evaluation: a few frames spread over the clip, shrunk for a judge or a report.

The judge reads its frames from the raw clip (``clip_judge_frames``), as the authors'
judge does: every frame of a clip that has at most ``count``, otherwise frames
``int(i * n / count)`` for ``i < count`` (the first frame included), longer side shrunk to
``max_side`` (the authors also enlarge smaller frames; we never do).
"""

from __future__ import annotations

import base64
import io

import numpy as np

from ebmrl.video import read_frames, spread_frames


def shrink(frames: np.ndarray, max_side: int) -> np.ndarray:
    """Frames resized so that the longer side is at most ``max_side`` (never enlarged)."""
    from PIL import Image

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    height, width = frames.shape[1:3]
    scale = max_side / max(height, width)
    if scale >= 1:
        return frames
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    return np.stack(
        [np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC), dtype=np.uint8) for f in frames]
    )


def judge_frames(frames: np.ndarray, count: int = 8, max_side: int = 448) -> np.ndarray:
    """What a judge sees of a clip: ``count`` evenly spread frames, shrunk to ``max_side``."""
    return shrink(spread_frames(frames, count), max_side)


def judge_frame_indices(num_frames: int, count: int) -> list[int]:
    """The authors' judge frames of a clip of ``num_frames`` frames."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    if num_frames <= count:
        return list(range(num_frames))
    return sorted({i * num_frames // count for i in range(count)})


def clip_judge_frames(uri: str, count: int = 8, max_side: int = 512) -> np.ndarray:
    """What a judge sees of a clip, read from the video itself (raises ``VideoError``)."""
    frames, _, _ = read_frames(uri, lambda info: judge_frame_indices(info.num_frames, count))
    return shrink(frames, max_side)


def jpeg_data_url(frame: np.ndarray, quality: int = 80) -> str:
    """One frame as an inline ``data:image/jpeg;base64,...`` URL (for offline HTML)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnails(frames: np.ndarray, count: int, max_side: int = 160) -> list[str]:
    """``count`` evenly spread frames of a clip as small inline JPEGs (the report's)."""
    return [jpeg_data_url(f) for f in shrink(spread_frames(frames, count), max_side)]
