"""GRPO step time with the four EBM-RL rewards vs. the format reward alone (tiny models).

Both runs use the same trainer (``VideoGRPOTrainer``), model, data, seed and G; only the
reward functions differ. Prints the time per optimiser step and where it goes:
generation, reward computation, reference/old log-prob passes, and the policy
forward + backward (the rest of the step).

    .venv/bin/python bench/bench_grpo_step.py [--steps 6]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def demo_inputs(root: Path, clip_path: str):
    """Demo clips and samples with their frames and CLIP embeddings in memory."""
    from ebmrl import demo, video
    from ebmrl.data.split import split_by_session
    from ebmrl.frame_store import MemoryFrameStore
    from ebmrl.rewards.clip import OpenClipEncoder
    from ebmrl.schema import load_profiles, load_released
    from ebmrl.train.training_set import TrainingInputs

    paths = demo.generate(root / "demo", seed=0, num_clips=8, num_sessions=4)
    encoder = OpenClipEncoder.load(clip_path)
    store = MemoryFrameStore()
    for clip in sorted(paths["videos"].glob("*.mp4")):
        frames = video.sample_frames(clip)[0]
        store.add(clip.stem, frames=frames, embeddings=encoder.encode_frames(frames))
    train, test = split_by_session(load_released(paths["samples"]), 0.25)
    return TrainingInputs(train, test, store, load_profiles(paths["profiles"]))


class PhaseTimer:
    """Wraps trainer methods to add up the wall time spent in each phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj, method: str, phase: str) -> None:
        original = getattr(obj, method)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started

        setattr(obj, method, timed)


def run(label: str, weights: dict[str, float], args, tiny: dict[str, Path], inputs, workdir: Path):
    import torch

    from ebmrl import config
    from ebmrl.models import load_vlm
    from ebmrl.train import grpo as grpo_module

    torch.manual_seed(0)
    params = config.validate(
        {
            "models": {"clip": str(tiny["clip"]), "text_encoder": str(tiny["text_encoder"])},
            "rewards": {"weights": weights},
            "grpo": {
                "out": str(workdir / label),
                "init_model": str(tiny["vlm"]),
                "max_steps": args.steps,
                "per_device_batch_size": 8,
                "gradient_accumulation_steps": 1,
                "max_completion_length": args.completion_tokens,
                "learning_rate": 1e-4,
                "save_steps": 10_000,
            },
        }
    )
    timer = PhaseTimer()

    def instrument(trainer):
        timer.wrap(trainer, "_generate_single_turn", "generation")
        # Time inside the reward functions themselves (TRL calls them from its own loop).
        for index, func in enumerate(trainer.reward_funcs):
            holder = type("Holder", (), {})()
            holder.call = func
            timer.wrap(holder, "call", "rewards")
            timed = holder.call
            timed.__name__ = func.__name__
            trainer.reward_funcs[index] = timed
        timer.wrap(trainer, "_prepare_inputs", "prepare (gen + rewards + ref/old logps)")
        timer.wrap(trainer, "training_step", "step")

    model, processor = load_vlm(tiny["vlm"])
    grpo_module.train_grpo(
        params.grpo,
        params.models,
        params.rewards,
        inputs,
        model=model,
        processor=processor,
        tags=params.tag_names(),
        trainer_hook=instrument,
    )
    s = timer.seconds
    steps = args.steps
    phases = {
        "generation": s["generation"] / steps,
        "rewards": s["rewards"] / steps,
        "ref/old log-probs + batching": (
            s["prepare (gen + rewards + ref/old logps)"] - s["generation"] - s["rewards"]
        )
        / steps,
        "policy forward + backward": (s["step"] - s["prepare (gen + rewards + ref/old logps)"])
        / steps,
    }
    return s["step"] / steps, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--completion-tokens", type=int, default=96)
    args = parser.parse_args()
    import torch

    from ebmrl.models import tiny

    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="bench_grpo_"))
    try:
        models = tiny.build_all(workdir / "tiny")
        inputs = demo_inputs(workdir, str(models["clip"]))
        four = {"answer": 1.0, "format": 1.0, "clip": 0.8, "pcg": 0.8}
        only_format = {"answer": 0.0, "format": 1.0, "clip": 0.0, "pcg": 0.0}
        results = {
            "format only": run("format", only_format, args, models, inputs, workdir),
            "four rewards": run("four", four, args, models, inputs, workdir),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nGRPO step on the tiny models, G=8, {args.completion_tokens}-token completions, {args.steps} steps"
    )
    for label, (step, phases) in results.items():
        parts = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in phases.items())
        print(f"  {label:13s} {step:.2f} s/step  ({parts})")
    ratio = results["four rewards"][0] / results["format only"][0]
    print(f"  ratio four rewards / format only: {ratio:.2f}x")


if __name__ == "__main__":
    main()
