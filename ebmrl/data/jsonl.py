"""JSON-lines helpers for sample tables (one JSON object per line, written atomically)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ebmrl.io import atomic_path, parse_json_lines
from ebmrl.schema import Sample, SchemaError


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return parse_json_lines(path.read_text(encoding="utf-8"), str(path), SchemaError)


def write_samples(path: str | Path, samples: Iterable[Sample]) -> int:
    return write_jsonl(path, (s.model_dump(mode="json") for s in samples))


def read_samples(path: str | Path) -> list[Sample]:
    samples = []
    for number, row in enumerate(read_jsonl(path), start=1):
        try:
            samples.append(Sample.model_validate(row))
        except ValueError as exc:
            raise SchemaError(f"{path}: line {number}: not a sample: {exc}") from None
    return samples


def read_annotations(path: str | Path) -> dict[str, dict[str, Any]]:
    """``clip_id -> annotation`` from an annotate output folder or file."""
    path = Path(path)
    if path.is_dir():
        path = path / "annotations.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no annotations at {path} (did the annotate stage run?)")
    return {row["clip_id"]: row for row in read_jsonl(path)}
