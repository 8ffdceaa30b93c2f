"""Frames: per clip, the policy's frames and the CLIP embeddings of CLIP's own frames,
computed once and stored in shards (``ebmrl.frame_store.ShardWriter``).

Two samplings (``ebmrl.video.sample_clip``, params ``video``): the frames the VLM sees
(qwen-vl-utils' rules: about ``fps`` a second, ``min_frames``..``max_frames``, resized to
about ``max_pixels_per_frame``), stored; and the frames CLIP embeds (by duration,
``clip_frame_schedule``, decoded at full resolution and put through CLIP's own
preprocessing), of which only the embeddings are stored, with their indices.

All per-clip work runs in a pool of worker processes: decoding and resizing, CLIP's
preprocessing and, for a CLIP on the CPU, the embedding (each worker loads its own copy
once, with its share of the cores), and the shard payload (the clip's arrays serialised
and deflated). A worker returns a few compressed megabytes; the main process only
concatenates them into shards, so the stage scales with its workers. A CLIP on a GPU
stays in the main process (one copy on the device) and the workers send it preprocessed
frames. Results come back in manifest order, with a bounded number in flight so memory
stays flat on long manifests.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebmrl import video
from ebmrl.config import VideoSection
from ebmrl.frame_store import ClipPayload, ShardWriter, clip_payload


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
    frames: np.ndarray  # the policy's frames, (T, H, W, 3) uint8
    indices: list[int]
    timestamps: list[float]
    clip_inputs: Any  # CLIP's frames, preprocessed (a tensor) or raw uint8 frames
    clip_indices: list[int]
    fps: float
    seconds: float


class FramesError(RuntimeError):
    """Some clips could not be decoded; finished shards are kept for the next run."""


def clip_inputs(frames: np.ndarray, preprocess: Callable[[Any], Any]) -> Any:
    """CLIP's own preprocessing of full-size ``(T, H, W, 3)`` uint8 frames: a batch tensor."""
    import torch
    from PIL import Image

    return torch.stack([preprocess(Image.fromarray(np.asarray(f))) for f in frames])


def decode_clip(
    task: FrameTask,
    sampling: VideoSection,
    preprocess: Callable[[Any], Any] | None = None,
    threads: int = 0,
) -> DecodedClip:
    """The clip's policy frames and its CLIP frames (preprocessed when ``preprocess`` is
    given). ``threads``: decoder threads (0: the decoder's own choice)."""
    started = time.perf_counter()
    sampled = video.sample_clip(
        task.uri,
        sample_fps=sampling.fps,
        min_frames=sampling.min_frames,
        max_frames=sampling.max_frames,
        min_pixels=sampling.min_pixels_per_frame,
        max_pixels=sampling.max_pixels_per_frame,
        clip_schedule=sampling.clip_schedule(),
        threads=threads,
    )
    fps = sampled.info.fps
    raw = sampled.clip_frames
    return DecodedClip(
        clip_id=task.clip_id,
        frames=sampled.policy_frames,
        indices=[int(i) for i in sampled.policy_indices],
        timestamps=[round(i / fps, 6) for i in sampled.policy_indices],
        clip_inputs=raw if preprocess is None else clip_inputs(raw, preprocess),
        clip_indices=[int(i) for i in sampled.clip_indices],
        fps=fps,
        seconds=time.perf_counter() - started,
    )


def store_entry(task: FrameTask, clip: DecodedClip) -> dict[str, Any]:
    """The clip's index entry (``index.json``)."""
    return {
        "sha256": task.sha256,
        "uri": task.uri,
        "num_frames": int(clip.frames.shape[0]),
        "height": int(clip.frames.shape[1]),
        "width": int(clip.frames.shape[2]),
        "fps": clip.fps,
        "indices": clip.indices,
        "timestamps": clip.timestamps,
        "clip_indices": clip.clip_indices,
    }


@dataclass(frozen=True)
class EmbedderSpec:
    """What a worker needs to load its own CLIP (``ClipEmbedder.load`` on the CPU)."""

    name: str
    pretrained: str | None
    batch_size: int


@dataclass(frozen=True)
class ClipWork:
    """What a frames worker does with a clip besides decoding it.

    ``embedder``: the worker embeds the CLIP frames and returns the shard payload;
    otherwise ``preprocess`` (CLIP's preprocessing, the model runs in the main process)
    or neither (raw CLIP frames for the main process's embedder). ``threads``: the
    worker's share of the cores, for the decoder and torch.
    """

    embedder: EmbedderSpec | None = None
    preprocess: Callable[[Any], Any] | None = None
    compress: bool = True
    threads: int = 0


@dataclass
class ClipResult:
    """A worker's answer: the shard payload, or the decoded clip when the main process
    still embeds it."""

    payload: ClipPayload | None
    decoded: DecodedClip | None
    entry: dict[str, Any]
    decode_seconds: float
    embed_seconds: float


# A worker process's own CLIP models (loaded on its first clip, kept for the next ones).
_worker_embedders: dict[EmbedderSpec, ClipEmbedder] = {}


def _worker_embedder(spec: EmbedderSpec) -> ClipEmbedder:
    embedder = _worker_embedders.get(spec)
    if embedder is None:
        embedder = ClipEmbedder.load(spec.name, spec.pretrained, "cpu", spec.batch_size)
        _worker_embedders[spec] = embedder
    return embedder


_threads_set = False


def _use_threads(threads: int) -> None:
    """Torch's threads in a worker process: its share of the cores, set once."""
    global _threads_set
    if threads > 0 and not _threads_set:
        import torch

        torch.set_num_threads(threads)
        _threads_set = True


def process_clip(task: FrameTask, sampling: VideoSection, work: ClipWork) -> ClipResult:
    """Worker: everything one clip needs (decode, resize, CLIP, shard payload)."""
    _use_threads(work.threads)
    embedder = _worker_embedder(work.embedder) if work.embedder else None
    preprocess = embedder.preprocess if embedder is not None else work.preprocess
    clip = decode_clip(task, sampling, preprocess, threads=work.threads)
    entry = store_entry(task, clip)
    if embedder is None:
        return ClipResult(None, clip, entry, clip.seconds, 0.0)
    tic = time.perf_counter()
    embeddings = embedder.encode_inputs(clip.clip_inputs)
    embed_seconds = time.perf_counter() - tic
    payload = clip_payload(task.clip_id, clip.frames, embeddings, entry, compress=work.compress)
    return ClipResult(payload, None, entry, clip.seconds, embed_seconds)


def ordered_map(
    fn: Callable[..., Any], tasks: Sequence[Any], *args: Any, workers: int
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """``(task, result, error)`` in task order, ``workers`` processes (0: this process),
    at most ``4 * workers`` tasks in flight, so a slow clip at the head of the queue does
    not leave the other workers idle (the results waiting behind it are small)."""
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
            if len(pending) >= 4 * workers:
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
    """CLIP image embeddings of frames, L2-normalised, in batches, through CLIP's own
    preprocessing (``preprocess``: what ``decode_clip`` applies in the workers)."""

    def __init__(
        self,
        model: Any,
        preprocess: Any,
        device: str = "cpu",
        batch_size: int = 64,
        spec: EmbedderSpec | None = None,
    ):
        self.model, self.preprocess, self.device, self.batch_size = (
            model,
            preprocess,
            device,
            batch_size,
        )
        self.spec = spec  # how to load the same model again (in a worker); None: cannot

    @classmethod
    def load(
        cls, name: str, pretrained: str | None, device: str = "cpu", batch_size: int = 64
    ) -> ClipEmbedder:
        from ebmrl.models import load_clip

        model, preprocess, _ = load_clip(name, pretrained=pretrained, device=device)
        return cls(
            model, preprocess, device, batch_size, EmbedderSpec(name, pretrained, batch_size)
        )

    def worker_spec(self) -> EmbedderSpec | None:
        """The spec a frames worker loads its own copy from: only for a CPU model (a GPU
        keeps one copy, in the main process)."""
        return self.spec if self.device == "cpu" else None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.encode_inputs(clip_inputs(frames, self.preprocess))

    def encode_inputs(self, inputs: Any) -> np.ndarray:
        """Embeddings of already preprocessed frames (``clip_inputs``)."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(inputs), self.batch_size):
                batch = inputs[start : start + self.batch_size].to(self.device)
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


def _plan(
    embedder: Callable[[np.ndarray], np.ndarray],
    workers: int,
    compress: bool,
    threads_per_worker: int | None = None,
) -> tuple[ClipWork, Callable[[Any], np.ndarray]]:
    """Who embeds: the workers (a ``ClipEmbedder`` on the CPU), or this process (a GPU
    model, with the workers preprocessing; any other callable, on raw frames)."""
    if threads_per_worker is not None:
        threads = threads_per_worker
    else:
        cores = os.cpu_count() or 1
        threads = max(1, cores // workers) if workers > 0 else 0
    spec = embedder.worker_spec() if isinstance(embedder, ClipEmbedder) else None
    if spec is not None:
        return ClipWork(embedder=spec, compress=compress, threads=threads), embedder.encode_inputs
    preprocess = getattr(embedder, "preprocess", None)
    encode = getattr(embedder, "encode_inputs", None)
    if preprocess is not None and encode is not None:
        return ClipWork(preprocess=preprocess, compress=compress, threads=threads), encode
    return ClipWork(compress=compress, threads=threads), embedder


def build_store(
    tasks: Iterable[FrameTask],
    out: str | Path,
    *,
    embedder: Callable[[np.ndarray], np.ndarray],
    settings: dict[str, Any],
    sampling: VideoSection,
    workers: int = 2,
    shard_size_bytes: int = 64 << 20,
    compress: bool = True,
    progress: bool = False,
    threads_per_worker: int | None = None,
) -> FramesReport:
    """Fill the store at ``out`` with every task's frames and embeddings.

    ``embedder`` maps raw uint8 frames to embeddings. A ``ClipEmbedder`` on the CPU is
    loaded again in every worker, which then does all of a clip's work; one on a GPU (or
    any object with a ``preprocess`` and an ``encode_inputs``) has the preprocessing done
    in the workers and the model run here. Each worker's decoder and torch get
    ``threads_per_worker`` threads (default: the cores divided among the workers, so one
    worker still uses every core while it decodes).
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
    work, encode = _plan(embedder, workers, compress, threads_per_worker)
    if workers <= 0 and work.embedder is not None:
        _worker_embedders[work.embedder] = embedder  # in this process: the model at hand
    try:
        results = ordered_map(process_clip, todo, sampling, work, workers=workers)
        for task, result, error in results:
            if error is not None:
                reason = (
                    error.reason
                    if isinstance(error, video.VideoError)
                    else f"{type(error).__name__}: {error}"
                )
                failed.append({"clip_id": task.clip_id, "uri": task.uri, "reason": reason})
            elif result.payload is not None:
                decode_seconds += result.decode_seconds
                embed_seconds += result.embed_seconds
                writer.add_payload(result.payload)
            else:
                decode_seconds += result.decode_seconds
                clip = result.decoded
                tic = time.perf_counter()
                embeddings = encode(clip.clip_inputs)
                embed_seconds += time.perf_counter() - tic
                writer.add(task.clip_id, clip.frames, embeddings, result.entry)
            if bar is not None:
                bar.update(1)
    finally:
        if workers <= 0 and work.embedder is not None:
            _worker_embedders.pop(work.embedder, None)
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
    sampling: VideoSection, clip_model: str, clip_pretrained: str | None
) -> dict[str, Any]:
    """What the stored frames depend on; a change invalidates every shard."""
    from ebmrl.models.identity import model_fingerprint

    return {
        "video": sampling.model_dump(mode="json"),
        "clip_model": model_fingerprint(clip_model),
        "clip_pretrained": clip_pretrained,
    }
