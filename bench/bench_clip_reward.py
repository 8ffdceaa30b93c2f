"""CLIP reward: frame embeddings from the per-clip store vs re-encoding frames per completion.

    .venv/bin/python bench/bench_clip_reward.py [--arch ViT-L-14] [--groups 20] [--device cpu]

One GRPO group = G completions of one prompt (one clip). The store path (``ClipReward``)
encodes the G perceptions in one batch and reads the clip's frame embeddings, computed
once per clip by the frames stage; the naive path, what a reward written per completion
does, encodes the clip's frames and the perception for every completion. Prints
image-encoder calls, frames encoded and wall time per group, and the ratios.

``--arch`` builds an open_clip architecture with random weights (no download), e.g.
``ViT-L-14`` for the paper's compute; the default is the tiny test CLIP.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


class CountingEncoder:
    """Delegates to an OpenClipEncoder, counting image- and text-encoder calls."""

    def __init__(self, inner):
        self.inner = inner
        self.image_calls = self.frames_encoded = self.text_calls = 0

    def encode_texts(self, texts):
        self.text_calls += 1
        return self.inner.encode_texts(texts)

    def encode_frames(self, frames):
        self.image_calls += 1
        self.frames_encoded += len(frames)
        return self.inner.encode_frames(frames)


def naive_group(encoder, frames, completions) -> list[float]:
    """Per completion: encode the clip's frames and the perception, take the max cosine."""
    from ebmrl.rewards.clip import max_frame_similarity
    from ebmrl.tags import first_block

    values = []
    for completion in completions:
        frame_embs = encoder.encode_frames(frames)
        perception = (first_block(completion, "perception") or "").strip()
        if not perception:
            values.append(0.0)
            continue
        values.append(
            max_frame_similarity(encoder.encode_texts([perception]).vectors[0], frame_embs)
        )
    return values


def group_completions(group_size: int, group: int) -> list[str]:
    return [
        f"<perception>Group {group}: {i} white figures walk left in a dim blue street; "
        f"orange flames flicker.</perception><think>Danger.</think><answer>Back!</answer>"
        for i in range(group_size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=None, help="open_clip architecture, random weights")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (paper: 4-32)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from ebmrl import demo, video
    from ebmrl.frame_store import MemoryFrameStore
    from ebmrl.models import tiny
    from ebmrl.rewards.clip import ClipReward, OpenClipEncoder

    with tempfile.TemporaryDirectory() as tmp:
        data = demo.generate(Path(tmp) / "demo", num_clips=2, num_sessions=2, samples_per_clip=1)
        clip_path = sorted(data["videos"].glob("*.mp4"))[0]
        frames, _, _ = video.sample_frames(clip_path, count=args.frames)
        model_id = args.arch or str(tiny.build_clip(Path(tmp) / "clip"))
        encoder = CountingEncoder(OpenClipEncoder.load(model_id, device=args.device))

        store = MemoryFrameStore()
        store.add("clip", embeddings=encoder.encode_frames(frames))  # the frames stage, once
        reward = ClipReward(encoder, store, mode="max")

        # Warm up both paths (first calls allocate and JIT-compile kernels).
        reward.score(group_completions(args.group_size, -1), ["clip"] * args.group_size)
        naive_group(encoder, frames, group_completions(args.group_size, -1))

        results = {}
        for name in ("store", "naive"):
            encoder.image_calls = encoder.frames_encoded = encoder.text_calls = 0
            times = []
            for group in range(args.groups):
                completions = group_completions(args.group_size, group)
                start = time.perf_counter()
                if name == "store":
                    values = reward.score(completions, ["clip"] * args.group_size).values
                else:
                    values = naive_group(encoder, frames, completions)
                times.append(time.perf_counter() - start)
            results[name] = {
                "seconds": statistics.median(times),
                "image_calls": encoder.image_calls / args.groups,
                "frames": encoder.frames_encoded / args.groups,
                "text_calls": encoder.text_calls / args.groups,
                "values": values,
            }
        store_values, naive_values = results["store"]["values"], results["naive"]["values"]
        assert max(abs(a - b) for a, b in zip(store_values, naive_values, strict=True)) < 1e-4

    s, n = results["store"], results["naive"]
    print(
        f"CLIP reward, G={args.group_size}, {args.frames} frames/clip, "
        f"model={args.arch or 'tiny'}, device={args.device}, {args.groups} groups"
    )
    print(f"{'per group':<28}{'store':>12}{'naive':>12}{'naive/store':>14}")
    print(f"{'image-encoder calls':<28}{s['image_calls']:>12.0f}{n['image_calls']:>12.0f}{'-':>14}")
    # The store's frames are encoded once per clip by the frames stage: count that call
    # against a single group, the least favourable case for the store.
    print(
        f"{'  incl. the one-time fill':<28}{s['image_calls'] + 1:>12.0f}{n['image_calls']:>12.0f}"
        f"{n['image_calls'] / (s['image_calls'] + 1):>13.1f}x"
    )
    print(f"{'frames encoded':<28}{s['frames']:>12.0f}{n['frames']:>12.0f}")
    print(f"{'text-encoder calls':<28}{s['text_calls']:>12.0f}{n['text_calls']:>12.0f}")
    print(
        f"{'wall time (median, ms)':<28}{s['seconds'] * 1e3:>12.2f}{n['seconds'] * 1e3:>12.2f}"
        f"{n['seconds'] / s['seconds']:>14.1f}x"
    )
    print(
        f"store: the clip's {args.frames} frames were encoded once (1 image-encoder call) "
        f"for all {args.groups} groups; same rewards on both paths (checked)."
    )


if __name__ == "__main__":
    main()
