"""``ebmrl tiny-models``: build the offline models (params: ``tiny_models``, and
``demo.width``/``height``/``fps``, the frame geometry the tiny models learn to see).

Writes under ``tiny_models.out``: the tiny Qwen2.5-VL pretrained to caption scenes of the
demo's grammar (``caption_training``), the tiny CLIP trained contrastively on them
(``clip_training``), a tiny BERT (random weights, for tests), and the real
all-MiniLM-L6-v2 copied from its registry package; and ``tiny_models.metrics``: the VLM's
held-out caption accuracy and the CLIP's held-out retrieval against chance.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ebmrl.config import Params

HELP = "build the offline models: a tiny VLM and CLIP that see the demo scenes, a tiny BERT, MiniLM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (default: tiny_models.out)")
    parser.add_argument("--metrics", help="metrics file (default: tiny_models.metrics)")


def _timed(train, *args):
    started = time.perf_counter()
    return train(*args), time.perf_counter() - started


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.io import write_json
    from ebmrl.models import tiny
    from ebmrl.models.caption_training import train_captions
    from ebmrl.models.clip_training import train_clip
    from ebmrl.models.packaged import copy_minilm
    from ebmrl.models.scene_clips import SceneGeometry

    section, demo = params.tiny_models, params.demo
    out = Path(args.out or section.out)
    started = time.perf_counter()
    built = tiny.build_all(out, seed=section.seed)
    print(f"random-weight models built in {time.perf_counter() - started:.1f}s")
    geometry = SceneGeometry(demo.width, demo.height, demo.fps)
    # The two trainings are independent and single-threaded: one process each, so they
    # share a 2-core machine instead of taking turns on it.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        vlm_job = pool.submit(
            _timed, train_captions, built["vlm"], section.vlm, geometry, section.seed
        )
        clip_job = pool.submit(
            _timed, train_clip, built["clip"], section.clip, geometry, section.seed
        )
        (captions, vlm_seconds), (report, clip_seconds) = vlm_job.result(), clip_job.result()
    print(
        f"tiny VLM caption-pretrained in {vlm_seconds:.1f}s: held-out attributes stated "
        f"correctly {captions['caption_accuracy']:.3f} (untrained "
        f"{captions['untrained']['caption_accuracy']:.3f}); {captions['attribute_accuracy']}; "
        f"after a long instruction {captions['long_context']['caption_accuracy']:.3f} (before "
        f"that phase {captions['long_context']['before']['caption_accuracy']:.3f})"
    )
    print(
        f"tiny CLIP trained in {clip_seconds:.1f}s: held-out text->frame "
        f"top-1 {report['retrieval_top1']:.3f} (chance {report['retrieval_chance']:.3f}, "
        f"untrained {report['untrained']['retrieval_top1']:.3f}); per attribute "
        f"{report['attribute_accuracy']}"
    )
    built["minilm"] = copy_minilm(out / "minilm")
    for kind, path in built.items():
        print(f"  {kind:13s} -> {path}")
    write_json(args.metrics or section.metrics, {"vlm": captions, "clip": report})
    return 0
