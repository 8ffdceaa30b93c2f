"""``ebmrl synthesize``: the training set, split by session (params: ``synthesize``,
``models.vlm``/``dtype``/``device``/``attn_implementation`` for a local backend).

Writes ``<out>/train.jsonl``, ``<out>/test.jsonl`` (our ``Sample`` schema; load with
``ebmrl.data.dataset.load_split``), ``<out>/profiles.json`` and ``<out>/report.json``
(counts, what was dropped and why). Run statistics (requests, cache hits, retries,
seconds) go to the log.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ebmrl.config import Params

HELP = "write the training samples (film lines or LLM dialogues + traces), split by session"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ingest", help="ingest output folder (default: synthesize.ingest)")
    parser.add_argument(
        "--annotations", help="annotate output folder (default: synthesize.annotations)"
    )
    parser.add_argument("--profiles", help="character profiles (default: synthesize.profiles)")
    parser.add_argument("--out", help="output folder (default: synthesize.out)")
    parser.add_argument("--cache", help="response cache folder (default: synthesize.cache)")
    parser.add_argument(
        "--base-url", help="use this OpenAI-compatible endpoint (sets backend.kind: http)"
    )


def _needs_backend(mode: str, traces: str) -> bool:
    return mode == "llm" or traces != "keep"


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.backends import (
        GenerationClient,
        ResponseCache,
        concurrency,
        make_backend,
        retry_policy,
    )
    from ebmrl.data import synthesize as synth
    from ebmrl.data.dataset import write_dataset
    from ebmrl.data.ingest import read_manifest
    from ebmrl.data.jsonl import read_annotations, read_samples
    from ebmrl.data.split import split_by_session
    from ebmrl.edge.exit_codes import EXIT_INVALID
    from ebmrl.io import write_json
    from ebmrl.schema import load_profiles

    section = params.synthesize
    started = time.perf_counter()
    backend_section = section.backend
    if args.base_url:
        backend_section = backend_section.model_copy(
            update={"kind": "http", "base_url": args.base_url}
        )
    ingest_dir = Path(args.ingest or section.ingest)
    out = Path(args.out or section.out)
    needs_backend = _needs_backend(section.mode, section.traces)
    clips = read_manifest(ingest_dir, ok_only=True)
    book = load_profiles(args.profiles or section.profiles)
    descriptions = {}
    if needs_backend:
        annotations = read_annotations(args.annotations or section.annotations)
        descriptions = {cid: row["description"] for cid, row in annotations.items()}
    film = synth.film_of(book, section.source) if section.mode == "llm" else (section.source or "")
    backend = client = None
    # Opened even when unused: dvc.yaml declares the cache as a (persistent) output.
    cache = ResponseCache(Path(args.cache or section.cache) / "responses.jsonl")
    if needs_backend:
        backend = make_backend(backend_section, params.models)
        client = GenerationClient(backend, cache, retry_policy(backend_section))
    try:
        writer = None
        if client is not None:
            writer = synth.Writer(client, section, film, tags=params.tag_names())
        workers = concurrency(backend_section, backend) if backend is not None else 1
        if section.mode == "llm":
            assert writer is not None
            result = synth.llm_samples(
                writer, clips, descriptions, book, film, concurrency=workers, progress=True
            )
        else:
            imported = read_samples(ingest_dir / "samples.jsonl")
            result = synth.film_line_samples(
                imported,
                {c.clip_id for c in clips},
                traces=section.traces,
                writer=writer,
                descriptions=descriptions,
                book=book,
                copy_threshold=section.copy_threshold,
                concurrency=workers,
                progress=True,
            )
    finally:
        if backend is not None:
            backend.close()
        cache.close()
    samples = synth.uniform_ids(result.samples)
    run_stats = {
        "client": client.stats.as_dict() if client is not None else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(f"synthesize run: {json.dumps(run_stats)}")
    if not samples:
        print(f"error: no sample survived ({dict(result.drops.reasons)})", file=sys.stderr)
        return EXIT_INVALID
    train, test = split_by_session(samples, section.test_fraction, section.seed)
    write_dataset(out, {"train": train, "test": test}, book)
    report = {
        "mode": section.mode,
        "traces": section.traces,
        "samples": len(samples),
        "train": len(train),
        "test": len(test),
        "train_sessions": len({s.session_id for s in train}),
        "test_sessions": len({s.session_id for s in test}),
        "with_trace": sum(s.has_trace for s in samples),
        "dropped": dict(result.drops.reasons),
        "drop_examples": result.drops.examples,
        **result.stats,
    }
    write_json(out / "report.json", report)
    print(
        f"synthesize ({section.mode}): {len(train)} train / {len(test)} test sample(s), "
        f"{report['with_trace']} with a trace, dropped {report['dropped'] or 'none'} "
        f"in {run_stats['seconds']}s -> {out}"
    )
    return 0
