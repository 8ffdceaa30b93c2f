"""``ebmrl demo-data``: render the demo clips and samples (params: ``demo``)."""

from __future__ import annotations

import argparse
import time

from ebmrl.config import Params

HELP = "render deterministic demo clips with known scenes, profiles and role-play samples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (default: demo.out)")


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl import demo

    section = params.demo
    started = time.perf_counter()
    outputs = demo.generate(
        args.out or section.out,
        seed=section.seed,
        num_clips=section.num_clips,
        num_sessions=section.num_sessions,
        samples_per_clip=section.samples_per_clip,
        traced_fraction=section.traced_fraction,
        width=section.width,
        height=section.height,
        fps=section.fps,
        min_duration_s=section.min_duration_s,
        max_duration_s=section.max_duration_s,
        progress=True,
    )
    for kind, path in outputs.items():
        print(f"  {kind:8s} -> {path}")
    print(f"demo data written in {time.perf_counter() - started:.1f}s")
    return 0
