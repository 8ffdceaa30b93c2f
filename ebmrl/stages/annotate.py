"""``ebmrl annotate``: visual descriptions of the clips by a VLM (params: ``annotate``,
``models.vlm``/``dtype``/``device``/``attn_implementation`` for the local backend).

Writes ``<out>/annotations.jsonl`` (one row per ok clip) and ``<out>/report.json`` (what
was described, by which model); finished requests live in the append-only cache
``<cache>/responses.jsonl``, which survives crashes and reruns (no DVC output: DVC
never removes it, and the stage stays run-cacheable). Run statistics (cache hits, requests, retries, seconds) go to the log.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ebmrl.config import Params

HELP = "describe each clip with a VLM (local or OpenAI-compatible HTTP), cached and resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ingest", help="ingest output folder (default: annotate.ingest)")
    parser.add_argument("--frames", help="frame store folder (default: annotate.frames)")
    parser.add_argument("--out", help="output folder (default: annotate.out)")
    parser.add_argument("--cache", help="response cache folder (default: annotate.cache)")
    parser.add_argument(
        "--base-url", help="use this OpenAI-compatible endpoint (sets backend.kind: http)"
    )


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.backends import (
        GenerationClient,
        ResponseCache,
        concurrency,
        make_backend,
        retry_policy,
    )
    from ebmrl.data.annotate import annotate_clips, prompt_hash
    from ebmrl.data.ingest import read_manifest
    from ebmrl.data.jsonl import write_jsonl
    from ebmrl.edge.exit_codes import EXIT_TRANSIENT
    from ebmrl.frame_store import ShardedFrameStore, require_clips
    from ebmrl.io import write_json

    section = params.annotate
    backend_section = section.backend
    if args.base_url:
        backend_section = backend_section.model_copy(
            update={"kind": "http", "base_url": args.base_url}
        )
    out = Path(args.out or section.out)
    clips = read_manifest(Path(args.ingest or section.ingest), ok_only=True)
    store = ShardedFrameStore.open(args.frames or section.frames)
    require_clips(store, [c.clip_id for c in clips])
    backend = make_backend(backend_section, params.models)
    cache = ResponseCache(Path(args.cache or section.cache) / "responses.jsonl")
    try:
        client = GenerationClient(backend, cache, retry_policy(backend_section))
        result = annotate_clips(
            clips,
            store,
            client,
            section,
            concurrency=concurrency(backend_section, backend),
            progress=True,
        )
    finally:
        backend.close()
        cache.close()
        store.close()
    stats = result.stats
    print(
        f"annotate: {len(result.annotations)}/{len(clips)} clip(s) described "
        f"({stats['cached_before']} cached, {stats['requested']} requested, "
        f"{stats['client']['retries']} retries) in {stats['seconds']}s"
    )
    print(f"annotate run: {json.dumps(stats)}")
    if result.failures:
        for failure in result.failures[:20]:
            print(
                f"  failed {failure['clip_id']} ({failure['uri']}): {failure['error']}",
                file=sys.stderr,
            )
        print(
            f"error: {len(result.failures)} clip(s) failed; the {len(result.annotations)} finished "
            "are cached: rerun to retry only the missing ones",
            file=sys.stderr,
        )
        # Only transient failures (the endpoint down or overloaded): a retry may succeed.
        return EXIT_TRANSIENT if all(f["retryable"] for f in result.failures) else 1
    write_jsonl(out / "annotations.jsonl", result.annotations)
    # Only what the inputs determine: a DVC output, the same bytes on every run.
    report = {
        "clips": len(result.annotations),
        "empty_descriptions": stats["empty_descriptions"],
        "model_id": backend.model_id,
        "prompt_hash": prompt_hash(section),
    }
    write_json(out / "report.json", report)
    print(f"  -> {out / 'annotations.jsonl'}")
    return 0
