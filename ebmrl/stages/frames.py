"""``ebmrl frames``: the policy's frames + CLIP embeddings of CLIP's own frames per clip, in
shards (params: ``frames``, ``video``, ``models.clip``, ``models.clip_pretrained``,
``models.device``).

Reruns reuse the clips already stored with the same settings (resume after a crash).
How long it took and how much was reused goes to the log, not into the store: the same
clips and settings give the same bytes whatever happened before.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ebmrl.config import Params

HELP = "sample frames per clip and compute CLIP frame embeddings into a sharded frame store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ingest", help="ingest output folder (default: frames.ingest)")
    parser.add_argument("--out", help="frame store folder (default: frames.out)")
    parser.add_argument("--workers", type=int, help="decoding processes (default: frames.workers)")


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.data import frames
    from ebmrl.data.ingest import read_manifest

    section, models = params.frames, params.models
    out = Path(args.out or section.out)
    workers = section.workers if args.workers is None else args.workers
    started = time.perf_counter()
    clips = read_manifest(Path(args.ingest or section.ingest), ok_only=True)
    tasks = [
        frames.FrameTask(c.clip_id, c.uri, c.sha256, c.width or 0, c.height or 0) for c in clips
    ]
    settings = frames.store_settings(params.video, models.clip, models.clip_pretrained)
    embedder = frames.ClipEmbedder.load(
        models.clip,
        models.clip_pretrained,
        device=models.device,
        batch_size=section.embed_batch_size,
    )
    try:
        report = frames.build_store(
            tasks,
            out,
            embedder=embedder,
            settings=settings,
            sampling=params.video,
            workers=workers,
            shard_size_bytes=int(section.shard_size_mb * (1 << 20)),
            compress=section.compress,
            progress=True,
        )
    except frames.FramesError as exc:
        print(f"error: {exc} (finished shards kept in {out}; rerun to resume)", file=sys.stderr)
        return 1
    print(
        f"frames: {report.clips} clip(s) ({report.reused} reused, {report.decoded} decoded) in "
        f"{time.perf_counter() - started:.1f}s -> {out}"
    )
    print(f"frames run: {json.dumps(report.as_dict())}")
    return 0
