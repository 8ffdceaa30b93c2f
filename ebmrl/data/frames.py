"""Frames: sample each clip's frames (count by duration), compute their CLIP embeddings
once, and store both in shards (``ebmrl.frame_store.ShardWriter``).

Decoding runs in a pool of worker processes (it is CPU-bound and decord holds the GIL
for part of it); CLIP runs in the main process, in batches, so one model serves all
workers (on a GPU there is then one copy of it). Results come back in manifest order,
with a bounded number in flight so memory stays flat on long manifests.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebmrl import video
from ebmrl.frame_store import ShardWriter

Schedule = Sequence[tuple[float | None, int]]


@dataclass(frozen=True)
class FrameTask:
    clip_id: str
    uri: str
    sha256: str | None
    width: int
    height: int


@dataclass
class DecodedClip:
    clip_id: str
    frames: np.ndarray
    indices: list[int]
    timestamps: list[float]
    fps: float
    seconds: float


class FramesError(RuntimeError):
    """Some clips could not be decoded; finished shards are kept for the next run."""


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) scaled down to fit ``max_pixels`` (aspect kept, even sides), or
    None when the clip already fits (decode at native size, never upscale)."""
    if width * height <= max_pixels:
        return None
    scale = math.sqrt(max_pixels / (width * height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def decode_clip(task: FrameTask, schedule: Schedule, max_pixels: int) -> DecodedClip:
    """Worker: decode the clip's frames (uniform, count by duration), resized to the budget."""
    started = time.perf_counter()
    size = fit_size(task.width, task.height, max_pixels)
    frames, indices, info = video.sample_frames(task.uri, schedule=schedule, size=size)
    return DecodedClip(
        clip_id=task.clip_id,
        frames=frames,
        indices=[int(i) for i in indices],
        timestamps=[round(i / info.fps, 6) for i in indices],
        fps=info.fps,
        seconds=time.perf_counter() - started,
    )


def ordered_map(
    fn: Callable[..., Any], tasks: Sequence[Any], *args: Any, workers: int
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """``(task, result, error)`` in task order, ``workers`` processes (0: this process),
    at most ``2 * workers`` tasks in flight."""
    if workers <= 0:
        for task in tasks:
            try:
                yield task, fn(task, *args), None
            except Exception as exc:
                yield task, None, exc
        return
    # spawn, not fork: the parent may hold torch threads, which do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[tuple[Any, Future]] = deque()
        iterator = iter(tasks)
        for task in iterator:
            pending.append((task, pool.submit(fn, task, *args)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            task, future = pending.popleft()
            try:
                yield task, future.result(), None
            except Exception as exc:
                yield task, None, exc
            following = next(iterator, None)
            if following is not None:
                pending.append((following, pool.submit(fn, following, *args)))


class ClipEmbedder:
    """CLIP image embeddings of frames, L2-normalised, in batches."""

    def __init__(self, model: Any, preprocess: Any, device: str = "cpu", batch_size: int = 64):
        self.model, self.preprocess, self.device, self.batch_size = (
            model,
            preprocess,
            device,
            batch_size,
        )

    @classmethod
    def load(
        cls, name: str, pretrained: str | None, device: str = "cpu", batch_size: int = 64
    ) -> ClipEmbedder:
        from ebmrl.models import load_clip

        model, preprocess, _ = load_clip(name, pretrained=pretrained, device=device)
        return cls(model, preprocess, device, batch_size)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch
        from PIL import Image

        out = []
        with torch.no_grad():
            for start in range(0, len(frames), self.batch_size):
                batch = torch.stack(
                    [
                        self.preprocess(Image.fromarray(f))
                        for f in frames[start : start + self.batch_size]
                    ]
                ).to(self.device)
                features = self.model.encode_image(batch).float()
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


@dataclass
class FramesReport:
    clips: int
    reused: int
    decoded: int
    shards_written: int
    decode_seconds: float
    embed_seconds: float
    wall_seconds: float
    failed: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_store(
    tasks: Iterable[FrameTask],
    out: str | Path,
    *,
    embedder: Callable[[np.ndarray], np.ndarray],
    settings: dict[str, Any],
    schedule: Schedule,
    max_pixels: int,
    workers: int = 2,
    shard_size_bytes: int = 64 << 20,
    compress: bool = True,
    progress: bool = False,
) -> FramesReport:
    """Fill the store at ``out`` with every task's frames and embeddings.

    Clips already stored with the same ``settings`` (an interrupted or repeated run) are
    reused. If any clip fails to decode, the finished shards stay and ``FramesError``
    names the failed clips; ``index.json`` is only written when every clip is there.
    """
    started = time.perf_counter()
    tasks = list(tasks)
    writer = ShardWriter(out, settings, shard_size_bytes=shard_size_bytes, compress=compress)
    todo = [t for t in tasks if not writer.has(t.clip_id, t.sha256)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"frames ({workers or 1} worker(s))", unit="clip")
    decode_seconds = embed_seconds = 0.0
    failed: list[dict[str, str]] = []
    for task, clip, error in ordered_map(decode_clip, todo, schedule, max_pixels, workers=workers):
        if error is not None:
            reason = (
                error.reason
                if isinstance(error, video.VideoError)
                else f"{type(error).__name__}: {error}"
            )
            failed.append({"clip_id": task.clip_id, "uri": task.uri, "reason": reason})
        else:
            decode_seconds += clip.seconds
            tic = time.perf_counter()
            embeddings = embedder(clip.frames)
            embed_seconds += time.perf_counter() - tic
            entry = {
                "sha256": task.sha256,
                "uri": task.uri,
                "num_frames": int(clip.frames.shape[0]),
                "height": int(clip.frames.shape[1]),
                "width": int(clip.frames.shape[2]),
                "fps": clip.fps,
                "indices": clip.indices,
                "timestamps": clip.timestamps,
            }
            writer.add(task.clip_id, clip.frames, embeddings, entry)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    writer.flush()
    report = FramesReport(
        clips=len(tasks),
        reused=len(tasks) - len(todo),
        decoded=len(todo) - len(failed),
        shards_written=writer.written_shards,
        decode_seconds=round(decode_seconds, 3),
        embed_seconds=round(embed_seconds, 3),
        wall_seconds=0.0,
        failed=failed,
    )
    if failed:
        shown = "; ".join(f"{f['clip_id']} ({f['uri']}): {f['reason']}" for f in failed[:5])
        raise FramesError(f"{len(failed)} clip(s) could not be decoded: {shown}")
    writer.finish([t.clip_id for t in tasks])
    report.wall_seconds = round(time.perf_counter() - started, 3)
    return report


def store_settings(
    schedule: Schedule, max_pixels: int, clip_model: str, clip_pretrained: str | None
) -> dict[str, Any]:
    """What the stored frames depend on; a change invalidates every shard."""
    from ebmrl.models.identity import model_fingerprint

    return {
        "frame_schedule": [[bound, count] for bound, count in schedule],
        "max_pixels_per_frame": max_pixels,
        "clip_model": model_fingerprint(clip_model),
        "clip_pretrained": clip_pretrained,
    }
