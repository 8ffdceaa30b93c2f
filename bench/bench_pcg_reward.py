"""PCG reward: batched + baseline once per prompt vs one forward pass per query.

    .venv/bin/python bench/bench_pcg_reward.py [--vlm PATH] [--groups 10] [--batch-size 16]

One GRPO group = G completions of one prompt. The batched path
(``PerceptualCognitiveReward`` over ``VideoLikelihoodScorer``) scores the prompt's baseline
once and all G traces with it in ``ceil((G + 1) / batch_size)`` forward passes; the naive
path runs one forward pass per completion for its trace and another for its own
baseline (2G passes). Prints forward passes (counted by a hook on the model) and wall
time per group, and the ratios; checks both paths give the same rewards.

``--vlm`` takes any local Qwen-VL-style folder; the default is the tiny test model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def completions(group_size: int, group: int) -> list[str]:
    return [
        f"<perception>Group {group}, take {i}: two white figures walk left in a dim blue "
        f"street; orange flames flicker at the bottom.</perception><think>The scene is "
        f"dangerous; react to the fire and keep everyone back.</think><answer>Back!</answer>"
        for i in range(group_size)
    ]


def naive_group(scorer, prompt, clip_id, reference, texts) -> list[float]:
    """Per completion: a forward pass for its trace and one for its baseline."""
    from ebmrl.rewards.pcg import BASELINE_PREFIX, LikelihoodQuery, trace_block, trace_prefix

    values = []
    for text in texts:
        trace = LikelihoodQuery(prompt, clip_id, trace_prefix(trace_block(text)), reference)
        baseline = LikelihoodQuery(prompt, clip_id, BASELINE_PREFIX, reference)
        values.append(scorer.mean_logprob([trace])[0] - scorer.mean_logprob([baseline])[0])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", default=None, help="local VLM folder (default: tiny)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from ebmrl import demo, video
    from ebmrl.frame_store import MemoryFrameStore
    from ebmrl.models import load_vlm, tiny
    from ebmrl.models.vlm import video_messages
    from ebmrl.rewards.likelihood import VideoLikelihoodScorer
    from ebmrl.rewards.pcg import PerceptualCognitiveReward

    with tempfile.TemporaryDirectory() as tmp:
        data = demo.generate(Path(tmp) / "demo", num_clips=2, num_sessions=2, samples_per_clip=1)
        frames, _, _ = video.sample_frames(
            sorted(data["videos"].glob("*.mp4"))[0], count=args.frames
        )
        vlm_path = args.vlm or str(tiny.build_qwen2_5_vl(Path(tmp) / "vlm"))
        model, processor = load_vlm(vlm_path, dtype=args.dtype, device=args.device)
    store = MemoryFrameStore()
    store.add("clip", frames=frames)
    passes = [0]
    model.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    prompt = video_messages("Mira, what do you make of that?")
    reference = "Fire on the ground, get back now. Everyone behind me."
    G = args.group_size

    batched_scorer = VideoLikelihoodScorer(model, processor, store, batch_size=args.batch_size)
    naive_scorer = VideoLikelihoodScorer(model, processor, store, batch_size=1)

    def batched(group: int) -> list[float]:
        reward = PerceptualCognitiveReward(batched_scorer)  # fresh cache: baseline scored once
        texts = completions(G, group)
        return reward.score(
            texts, [prompt] * G, ["clip"] * G, [reference] * G, [f"p{group}"] * G
        ).values

    def naive(group: int) -> list[float]:
        return naive_group(naive_scorer, prompt, "clip", reference, completions(G, group))

    batched(-1), naive(-1)  # warm-up
    results = {}
    for name, run in (("batched", batched), ("naive", naive)):
        passes[0] = 0
        times, values = [], []
        for group in range(args.groups):
            start = time.perf_counter()
            values.append(run(group))
            times.append(time.perf_counter() - start)
        results[name] = {
            "seconds": statistics.median(times),
            "passes": passes[0] / args.groups,
            "values": values,
        }
    for a, b in zip(results["batched"]["values"], results["naive"]["values"], strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3

    b, n = results["batched"], results["naive"]
    print(
        f"PCG reward, G={G}, batch size {args.batch_size}, {args.frames} frames, "
        f"model={args.vlm or 'tiny Qwen2.5-VL'}, device={args.device}, {args.groups} groups"
    )
    print(f"{'per group':<28}{'batched':>12}{'naive':>12}{'naive/batched':>16}")
    print(
        f"{'forward passes':<28}{b['passes']:>12.0f}{n['passes']:>12.0f}{n['passes'] / b['passes']:>15.1f}x"
    )
    print(
        f"{'wall time (median, ms)':<28}{b['seconds'] * 1e3:>12.1f}{n['seconds'] * 1e3:>12.1f}"
        f"{n['seconds'] / b['seconds']:>15.1f}x"
    )
    print("same rewards on both paths (checked, |diff| < 1e-3)")


if __name__ == "__main__":
    main()
