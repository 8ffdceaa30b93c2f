"""``ebmrl tiny-models``: build the tiny offline models (params: ``tiny_models``)."""

from __future__ import annotations

import argparse
import time

from ebmrl.config import Params

HELP = "build tiny random-weight models (Qwen2.5-VL, CLIP, text encoder) for offline runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (default: tiny_models.out)")


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.models import tiny

    section = params.tiny_models
    out = args.out or section.out
    started = time.perf_counter()
    built = tiny.build_all(out, seed=section.seed)
    for kind, path in built.items():
        print(f"  {kind:13s} -> {path}")
    print(f"tiny models built in {time.perf_counter() - started:.1f}s")
    return 0
