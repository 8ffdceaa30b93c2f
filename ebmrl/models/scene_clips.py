"""Clips of the demo's scene grammar rendered for pretraining the tiny models.

Both tiny models that learn to see (the CLIP, ``clip_training``; the VLM,
``caption_training``) train on scenes drawn from the demo's grammar (``ebmrl.demo``)
and rendered with seeds of their own, so they never see the demo's evaluation clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ebmrl import scene_words

from ebmrl import demo

# Seed streams of their own (see ``scene_seeds``).
TRAIN_STREAM, EVAL_STREAM = 0xC11F_0001, 0xC11F_0002


@dataclass(frozen=True)
class SceneGeometry:
    """Frame size and rate of the scenes (the demo's: ``demo.width``/``height``/``fps``)."""

    width: int = 128
    height: int = 96
    fps: int = 8


DEMO_GEOMETRY = SceneGeometry()  # the demo's defaults (params.yaml: demo)


@dataclass
class SceneClips:
    attributes: list[dict[str, Any]]  # per scene: its ground truth
    clips: list[np.ndarray]  # per scene: (T, H, W, 3) uint8 frames


def scene_seeds(seed: int, stream: int, count: int) -> list[list[int]]:
    """``count`` render seeds for this ``(seed, stream)``, disjoint from the demo's.

    The demo seeds its generators with one integer (``seed * 100_003 + index``); these are
    three-word entropy lists, which numpy's ``SeedSequence`` mixes into other streams for
    every demo seed below 2**64 / 100_003.
    """
    return [[stream, seed, index] for index in range(count)]


def render_clips(
    count: int, seed: int, stream: int, geometry: SceneGeometry, duration_s: float = 1.0
) -> SceneClips:
    """``count`` scenes of the grammar and all frames of each (short clips: cheap)."""
    seeds = scene_seeds(seed, stream, count + 1)
    scenes = demo.make_scenes(
        count, seeds[0], geometry.width, geometry.height, geometry.fps, duration_s, duration_s
    )
    return SceneClips(
        [scene_words.scene_attributes(s) for s in scenes],
        [demo.render_frames(s, render_seed) for s, render_seed in zip(scenes, seeds[1:], strict=True)],
    )


class torch_threads:
    """A fixed torch thread count for the block: 2 threads thrash on a busy 2-core
    machine, and a fixed count keeps float sums, so the weights, the same."""

    def __init__(self, count: int):
        self.count = count

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.count)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)
