"""Frames as base64 data URLs (what OpenAI-compatible chat APIs accept) and back."""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np

_DATA_URL = re.compile(r"^data:image/(?P<fmt>[a-zA-Z0-9.+-]+);base64,(?P<data>.*)$", re.DOTALL)


class ImageDecodeError(ValueError):
    """An image URL is not a decodable base64 data URL."""


def frame_to_data_url(frame: np.ndarray, image_format: str = "jpeg", quality: int = 90) -> str:
    from PIL import Image

    image = Image.fromarray(np.asarray(frame, dtype=np.uint8), mode="RGB")
    buffer = io.BytesIO()
    fmt = image_format.lower()
    if fmt in ("jpg", "jpeg"):
        image.save(buffer, format="JPEG", quality=quality)
        mime = "jpeg"
    elif fmt == "png":
        image.save(buffer, format="PNG")
        mime = "png"
    else:
        raise ValueError(f"image format must be jpeg or png, got {image_format!r}")
    return f"data:image/{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def data_url_to_frame(url: str) -> np.ndarray:
    """Decode a ``data:image/...;base64,...`` URL into an ``(H, W, 3)`` uint8 array."""
    from PIL import Image, UnidentifiedImageError

    match = _DATA_URL.match(url or "")
    if not match:
        shown = (url or "")[:40]
        raise ImageDecodeError(
            f"only base64 data URLs (data:image/<format>;base64,...) are supported, got {shown!r}"
        )
    try:
        payload = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"invalid base64 image data: {exc}") from None
    try:
        with Image.open(io.BytesIO(payload)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDecodeError(f"cannot decode image/{match['fmt']} data: {exc}") from None


def stack_frames(frames: list[np.ndarray]) -> np.ndarray:
    """Stack frames into ``(T, H, W, 3)``, resizing any that differ to the first one's size."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to stack")
    height, width = frames[0].shape[:2]
    same = []
    for frame in frames:
        if frame.shape[:2] != (height, width):
            frame = np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))
        same.append(frame)
    return np.stack(same)
