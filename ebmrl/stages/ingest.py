"""``ebmrl ingest``: manifest of the source videos + imported records (params: ``ingest``).

Writes ``<out>/manifest.parquet`` (one row per distinct video: ok or quarantined with a
reason), ``<out>/samples.jsonl`` (released-format records whose clip is ok, with the
manifest's ``clip_id``) and ``<out>/report.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ebmrl.config import Params

HELP = "list and probe source videos (folder or s3://), quarantine bad files, import records"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="folder or s3://bucket/prefix (default: ingest.source)")
    parser.add_argument("--out", help="output folder (default: ingest.out)")
    records = parser.add_mutually_exclusive_group()
    records.add_argument(
        "--records",
        action="append",
        help="released-format records file (repeatable; default: ingest.records)",
    )
    records.add_argument(
        "--no-records",
        dest="records",
        action="store_const",
        const=[],
        help="import no records (videos only)",
    )
    parser.add_argument(
        "--strict", action="store_true", default=None, help="fail on any quarantine"
    )
    parser.add_argument(
        "--workers", type=int, help="files probed at once (default: ingest.workers)"
    )


def _missing(uris: list[str]) -> list[str]:
    import fsspec

    missing = []
    for uri in uris:
        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.exists(path):
            missing.append(uri)
    return missing


def check_inputs(source: str, records: list[str], args: argparse.Namespace) -> None:
    """The source and every records file exist, else a ``ConfigError`` naming the key
    (or the flag) that points at them, before any video is probed."""
    from ebmrl.config import ConfigError

    problems = []
    if _missing([source]):
        key = "--source" if args.source else "ingest.source"
        problems.append((key, f"{source} does not exist"))
    for uri in _missing(records):
        key = "--records" if args.records else "ingest.records"
        problems.append(
            (
                key,
                f"{uri} does not exist (no records to import: ingest.records: [] or --no-records)",
            )
        )
    if problems:
        raise ConfigError(args.params, problems)


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.data import ingest
    from ebmrl.data.jsonl import write_samples
    from ebmrl.edge.exit_codes import EXIT_INVALID
    from ebmrl.io import write_json

    section = params.ingest
    source = args.source or section.source
    out = Path(args.out or section.out)
    records = args.records if args.records is not None else section.records
    strict = section.strict if args.strict is None else args.strict
    check_inputs(source, records, args)
    started = time.perf_counter()
    result = ingest.ingest(
        source,
        records=records,
        extensions=section.extensions,
        limits=section.limits,
        verify_decode=section.verify_decode,
        workers=section.workers if args.workers is None else args.workers,
        progress=True,
    )
    ingest.write_manifest(out / "manifest.parquet", result.clips)
    write_samples(out / "samples.jsonl", result.samples)
    report = result.report()
    report["source"] = source
    # No timing in the report: it is a DVC output the next stages depend on, and the
    # same input must give the same bytes.
    write_json(out / "report.json", report)
    counts = report["counts"]
    seconds = round(time.perf_counter() - started, 2)
    print(
        f"ingest: {counts['ok']} ok, {counts['quarantined']} quarantined, "
        f"{counts['duplicates']} duplicate(s), {counts['samples_imported']} sample(s) imported, "
        f"{counts['records_rejected']} record(s) rejected in {seconds}s -> {out}"
    )
    for item in report["quarantined"][:20]:
        print(f"  quarantined {item['uri']}: {item['reason']}")
    if strict and (counts["quarantined"] or counts["records_rejected"]):
        print(
            f"error: --strict: {counts['quarantined']} file(s) quarantined and "
            f"{counts['records_rejected']} record(s) rejected (see {out / 'report.json'})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    return 0
