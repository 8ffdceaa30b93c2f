"""``ebmrl report``: the evaluation as one offline HTML page (params: ``report``;
``tracking`` for MLflow).

Runs after ``evaluate`` and ``videoqa``, which have no path between them and so run side
by side: it reads evaluate's ``results.json`` (every sample, every score), the VideoQA
metrics folder and the GRPO log history, takes each sample's thumbnails from the frame
store, and writes ``report.out`` (``reports/eval/index.html``). It computes nothing
new: a rerun on the same inputs writes the same bytes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ebmrl.config import Params, ReportSection

HELP = "render the offline HTML report from evaluate's results, VideoQA and the GRPO log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="the HTML file to write (default: report.out)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def _configured(path: str | None, key: str, without: str) -> Path | None:
    """``path`` when set; a missing one is an error naming the key (null: ``without``)."""
    if path is None:
        return None
    if not Path(path).exists():
        raise FileNotFoundError(2, f"report.{key} does not exist (null: {without})", path)
    return Path(path)


def videoqa_summaries(folder: Path | None) -> dict[str, Any]:
    """Each benchmark's summary (``<videoqa.metrics>/<benchmark>.json``), by name."""
    from ebmrl.io import read_json

    if folder is None:
        return {}
    return {path.stem: read_json(path) for path in sorted(folder.glob("*.json"))}


def reward_history(path: Path | None) -> list[dict[str, Any]] | None:
    """The GRPO stage's logged steps (``grpo.log_history``)."""
    from ebmrl.io import read_json

    if path is None:
        return None
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of logged steps, got {type(data).__name__}")
    return data


def report_data(section: ReportSection) -> dict[str, Any]:
    """evaluate's results with every sample's thumbnails, the VideoQA tables and the
    reward curves: what ``render_report`` draws."""
    from ebmrl.eval.frame_samples import thumbnails
    from ebmrl.frame_store import FrameStoreError, MissingClipError, ShardedFrameStore
    from ebmrl.io import read_json

    data = read_json(section.results)
    videoqa = videoqa_summaries(
        _configured(section.videoqa_metrics, "videoqa_metrics", "no VideoQA tables")
    )
    history = reward_history(_configured(section.training_log, "training_log", "no curves"))
    store = ShardedFrameStore.open(section.frames) if section.frames_per_sample else None
    try:
        for record in data.get("samples", []):
            record["frames"] = []
            if store is None or record.get("clip_problem"):
                continue  # evaluate said why the clip could not be read
            try:
                frames = store.frames(record["clip_id"])
            except (MissingClipError, FrameStoreError) as exc:
                record["clip_problem"] = f"clip {record['clip_id']} unreadable: {exc}"
                continue
            record["frames"] = thumbnails(frames, section.frames_per_sample)
    finally:
        if store is not None:
            store.close()
    return {**data, "videoqa": videoqa, "reward_history": history}


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.edge import tracking
    from ebmrl.eval.report import render_report
    from ebmrl.io import atomic_write_text

    if not args.no_tracking:
        tracking.require_mlflow()
    section = params.report
    started = time.perf_counter()
    data = report_data(section)  # every input read (and checked) before MLflow opens
    out = Path(args.out or section.out)
    logged = {"report": section.model_dump()}
    with tracking.stage_run(
        "report", params.tracking, logged, enabled=not args.no_tracking
    ) as mlflow:
        atomic_write_text(out, render_report(data))
        if mlflow is not None:
            mlflow.log_artifact(str(out))
    samples = len(data.get("samples", []))
    print(
        f"report: {samples} sample(s), {len(data['videoqa'])} VideoQA table(s), "
        f"{'reward curves' if data['reward_history'] else 'no reward curves'} "
        f"in {time.perf_counter() - started:.1f}s -> {out}"
    )
    return 0
