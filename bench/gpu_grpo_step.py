"""GPU check: a few video GRPO steps on the real Qwen2.5-VL-3B and -7B architectures.

Builds each architecture from its published dimensions with random weights (no download
needed to measure speed), then runs ``--steps`` GRPO steps of our ``VideoGRPOTrainer``
with G = 8 completions of exactly 1,024 tokens, 16 frames of about 100k pixels, bf16,
and prints the step time, completion tokens per second and peak GPU memory.

    python bench/gpu_grpo_step.py                  # both sizes, 3 steps each
    python bench/gpu_grpo_step.py --sizes 7B --steps 2
    python bench/gpu_grpo_step.py --sizes smoke --steps 2 --completion-tokens 16   # CPU check
    python bench/gpu_grpo_step.py --vllm           # rollouts by colocated vLLM (needs vllm)

Meant for a GPU machine (it fits one H100/H200 for 7B with gradient checkpointing);
without a CUDA device it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# Published Qwen2.5-VL dimensions (config.json of the Instruct checkpoints).
ARCHITECTURES = {
    "3B": {
        "text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2),
        "vision_out": 2048,
        "tie": True,
    },
    "7B": {
        "text": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4),
        "vision_out": 3584,
        "tie": False,
    },
    # A few-layer model with the same code path, to check this script on a CPU (tests).
    "smoke": {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2),
        "vision_out": 64,
        "tie": True,
        "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                       fullatt_block_indexes=[1], window_size=56),
        "mrope": [2, 3, 3],
    },
}  # fmt: skip
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112,
              fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)  # fmt: skip


def build_model(size: str, tokenizer, device: str):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    spec = ARCHITECTURES[size]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>",
                                                            "<|vision_start|>", "<|vision_end|>",
                                                            "<|im_end|>", "<|endoftext|>")}  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config={
            **spec["text"],
            "vocab_size": 151936 if size == "3B" else 152064,
            "max_position_embeddings": 128000,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": spec.get("mrope", [16, 24, 24]),
            },
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={**VISION, **spec.get("vision", {}), "out_hidden_size": spec["vision_out"]},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec["tie"],
    )
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.config.use_cache = True
    return model


def run_size(
    size: str,
    steps: int,
    workdir: Path,
    completion_tokens: int,
    num_frames: int,
    device: str,
    use_vllm: bool = False,
) -> dict[str, float]:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoProcessor, Qwen2VLVideoProcessor
    from trl import GRPOConfig

    from ebmrl import demo
    from ebmrl.frame_store import MemoryFrameStore
    from ebmrl.models import tiny
    from ebmrl.prompts.conversation import build_prompt
    from ebmrl.rewards.trl_adapter import format_reward_func
    from ebmrl.schema import Sample, Turn
    from ebmrl.train.video_grpo import VideoGRPOTrainer

    processor_dir = workdir / "processor"
    if not processor_dir.exists():
        tiny.build_qwen2_5_vl(processor_dir)
    processor = AutoProcessor.from_pretrained(processor_dir)
    # Real-scale frames: about 100k pixels each, as in the paper's recipe.
    pixels = {"min_pixels": 3136, "max_pixels": 100_352}
    processor.video_processor = Qwen2VLVideoProcessor(
        **pixels, do_sample_frames=False, cap_pixels_per_frame=True
    )
    scene = demo.make_scenes(1, 0, 384, 256, 8, 8.0, 8.0)[0]
    frames = demo.render_frames(scene, 0)
    frames = frames[np.linspace(0, len(frames) - 1, num_frames).astype(int)]
    store = MemoryFrameStore()
    store.add(scene.clip_id, frames=frames)
    sample = Sample(sample_id=1, session_id="s", user="user_fan", assistant="Mira Vale",
                    source=demo.UNIVERSE, dialogue=[Turn(speaker="user_fan", utterance="What was that?")],
                    target=Turn(speaker="Mira Vale", utterance="Get back."), video="v", clip_id=scene.clip_id)  # fmt: skip
    rows = [{"prompt": build_prompt(sample, demo.profile_book()), "clip_id": scene.clip_id}] * steps

    gpu = device == "cuda"
    # TRL builds the frozen reference model from the policy's path: save the random model.
    model_dir = workdir / f"qwen2_5_vl_{size}"
    build_model(size, processor.tokenizer, device).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)  # vLLM loads the processor from the model folder
    # Random weights would stop at random: force the full completion length.
    min_length = {"min_tokens" if use_vllm else "min_new_tokens": completion_tokens}
    args = GRPOConfig(
        output_dir=str(workdir / size),
        num_generations=8,
        per_device_train_batch_size=8,
        max_completion_length=completion_tokens,
        generation_kwargs=min_length,
        max_steps=steps,
        learning_rate=5e-7,
        beta=0.04,
        bf16=gpu,
        use_cpu=not gpu,
        activation_checkpointing=gpu,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        model_init_kwargs={"dtype": torch.bfloat16 if gpu else torch.float32},
        use_vllm=use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3,
        vllm_max_model_length=4096 + completion_tokens,
    )
    trainer = VideoGRPOTrainer(
        model=str(model_dir),
        reward_funcs=[format_reward_func()],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        frame_store=store,
    )
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    step_times = [e["step_time"] for e in trainer.state.log_history if "step_time" in e]
    steady = step_times[1:] or step_times
    step_s = sum(steady) / len(steady)
    result = {
        "step_s": step_s,
        "completion_tokens_per_s": 8 * completion_tokens / step_s,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan"),
        "total_s": total,
    }
    del trainer
    if gpu:
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["3B", "7B"], choices=sorted(ARCHITECTURES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--completion-tokens", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--vllm", action="store_true", help="sample with colocated vLLM")
    args = parser.parse_args(argv)
    import torch

    smoke_only = set(args.sizes) == {"smoke"}
    if not torch.cuda.is_available() and not smoke_only:
        print("gpu_grpo_step: no CUDA GPU on this machine; this check needs one. Nothing to do.")
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            r = run_size(
                size, args.steps, Path(tmp), args.completion_tokens, args.frames, device, args.vllm
            )
            engine = "vLLM" if args.vllm else "transformers"
            print(
                f"Qwen2.5-VL-{size} ({engine} rollouts): step {r['step_s']:.1f} s, {r['completion_tokens_per_s']:.0f} "
                f"completion tokens/s, peak {r['peak_gib']:.1f} GiB, total {r['total_s']:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
