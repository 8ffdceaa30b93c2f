"""The whole reward stack (format, answer, CLIP, PCG) per GRPO group, on the tiny models.

    .venv/bin/python bench/bench_reward_stack.py [--groups 10] [--group-size 8] [--leak-filter]

Builds the TRL reward functions exactly as the GRPO stage does (``build_reward_funcs``
from the default params), calls each with TRL's keyword arguments on one group of G
completions per prompt, and prints the median time per group, total and per reward.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def group_completions(group_size: int, group: int) -> list[list[dict[str, str]]]:
    lines = [
        "<perception>Two white figures walk left in a dim blue street. Orange flames flicker "
        "at the bottom of the frame.</perception>\n<think>The scene is dangerous. React to "
        "the fire.</think>\n<answer>Fire on the ground, get back now.</answer>",
        "<perception>A calm green square.</perception><think>Safe.</think><answer>Quiet "
        "night.</answer>",
        "<think>no perception</think><answer>Hm.</answer>",
        "random junk without tags",
    ]
    return [
        [{"role": "assistant", "content": lines[(i + group) % len(lines)].replace("two", f"{i}")}]
        for i in range(group_size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--leak-filter", action="store_true", help="enable the PCG leak filter")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from ebmrl import config, demo, video
    from ebmrl.frame_store import MemoryFrameStore
    from ebmrl.models import load_vlm, tiny
    from ebmrl.models.vlm import video_messages
    from ebmrl.rewards import reward_models
    from ebmrl.rewards.registry import RewardModels
    from ebmrl.rewards.trl_adapter import build_reward_funcs

    G = args.group_size
    with tempfile.TemporaryDirectory() as tmp:
        paths = tiny.build_all(Path(tmp) / "tiny")
        data = demo.generate(Path(tmp) / "demo", num_clips=2, num_sessions=2, samples_per_clip=1)
        params = config.validate(
            {
                "models": {"clip": str(paths["clip"]), "text_encoder": str(paths["text_encoder"])},
                "rewards": {
                    "pcg": {
                        "leak_filter": {
                            "enabled": args.leak_filter,
                            "model": str(paths["text_encoder"]),
                        }
                    }
                },
            }
        )
        clip_encoder = reward_models.clip_encoder(params.models)
        store = MemoryFrameStore()
        for path in sorted(data["videos"].glob("*.mp4")):
            frames, _, _ = video.sample_frames(path)
            store.add(path.stem, frames=frames, embeddings=clip_encoder.encode_frames(frames))
        model, processor = load_vlm(paths["vlm"])
        models = RewardModels(
            clip_encoder=clip_encoder,
            frame_store=store,
            answer_scorer=reward_models.answer_scorer(params.models, params.rewards.answer),
            pcg_scorer=reward_models.pcg_scorer(
                params.rewards.pcg,
                model,
                processor,
                store,
                shared_prefix=params.grpo.shared_prefix,
            ),
            sentence_embedder=reward_models.sentence_embedder(
                params.rewards.pcg.leak_filter, params.models.device
            ),
        )
        setup = build_reward_funcs(params.rewards, params.tag_names(), models)

    clip_ids = store.clip_ids()
    metrics: dict[str, float] = {}

    def run_group(group: int) -> dict[str, float]:
        completions = group_completions(G, group)
        columns = {
            "clip_id": [clip_ids[group % len(clip_ids)]] * G,
            "reference": ["Fire on the ground, get back now."] * G,
            "prompt_id": [f"p{group}"] * G,
        }
        seconds = {}
        for func in setup.funcs:
            start = time.perf_counter()
            func(
                prompts=[video_messages("Mira, what was that?")] * G,
                completions=completions,
                completion_ids=[[0]] * G,
                trainer_state=None,
                log_extra=lambda column, values: None,
                log_metric=metrics.__setitem__,
                **columns,
            )
            seconds[func.__name__] = time.perf_counter() - start
        return seconds

    run_group(-1)  # warm-up
    runs = [run_group(g) for g in range(args.groups)]
    print(
        f"reward stack per group, G={G}, tiny models, CPU (1 thread), {args.groups} groups, "
        f"leak filter {'on' if args.leak_filter else 'off'}"
    )
    for name in setup.names:
        print(f"  {name:<8}{statistics.median(r[name] for r in runs) * 1e3:>9.1f} ms")
    total = statistics.median(sum(r.values()) for r in runs)
    print(
        f"  {'total':<8}{total * 1e3:>9.1f} ms per group ({total / G * 1e3:.1f} ms per completion)"
    )
    print("diagnostics of the last group:", {k: round(v, 3) for k, v in sorted(metrics.items())})


if __name__ == "__main__":
    main()
