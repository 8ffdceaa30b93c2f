"""Shared prompt + video prefixes vs row by row, at paper proportions, on the tiny model.

    .venv/bin/python bench/bench_shared_prefix.py [--groups 3] [--prompt-tokens 1500]

One GRPO group on the tiny Qwen2.5-VL architecture scaled to the paper's proportions: a
16-frame clip at about 100k pixels a frame (1,024 video tokens), 1,500 prompt text
tokens, G = 8 completions of 300 tokens. Three passes, each through the code the GRPO
stage runs, with ``shared_prefix`` on and off:

- the reference pass (``VideoGRPOTrainer._get_per_token_logps_and_entropies`` on the
  trainer's reference model, batch size G as in the paper: one prompt's group per device
  step);
- the policy pass under training (the same method on the policy in training mode, with
  entropies, then the backward pass of a loss over its log-probs);
- PCG scoring (``PerceptualCognitiveReward`` over ``VideoLikelihoodScorer``, batch 16):
  the baseline and the G traces of a prompt seen for the first time.

Prints, per group: vision-tower calls and the videos they encode (a forward hook on the
real vision tower), positions run through the language model (batch x length of every
language-model call, padding included), and the median wall time; checks both paths
give the same numbers. Then the FLOP arithmetic of a paper-scale GRPO step on
Qwen2.5-VL-7B's published dimensions. One torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

# Qwen2.5-VL-7B-Instruct's config.json (text model and vision tower).
QWEN_7B = dict(layers=28, d=3584, ffn=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064)
VISION_7B = dict(depth=32, d=1280, ffn=3420, full_blocks=4, window=64, out=3584, merge=4)


class LanguagePositions:
    """Batch x length of every call of the language model (a forward pre-hook)."""

    def __init__(self, model):
        self.count = 0
        self.module = model.model.language_model

    def hook(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        self.count += int(embeds.shape[0] * embeds.shape[1])

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self.hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def text_of(tokenizer, words: list[str], tokens: int) -> str:
    """Words from the tiny corpus, cut to exactly ``tokens`` tokens."""
    ids: list[int] = []
    i = 0
    while len(ids) < tokens:
        ids += tokenizer(" ".join(words[i : i + 50]) + " ")["input_ids"]
        i += 50
    return tokenizer.decode(ids[:tokens])


def setup(tmp: Path, args):
    import torch
    from datasets import Dataset
    from trl import GRPOConfig

    from ebmrl.frame_store import MemoryFrameStore
    from ebmrl.models import load_vlm, tiny
    from ebmrl.models.vlm import video_messages
    from ebmrl.train.video_grpo import VideoGRPOTrainer

    path = tiny.build_qwen2_5_vl(tmp / "vlm")
    model, processor = load_vlm(path)
    # The paper's pixel budget (the tiny processor's own is 112 x 112 a frame).
    pixels = args.frame_pixels
    processor.video_processor.size = {"shortest_edge": pixels, "longest_edge": pixels}
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (args.frames, 224, pixels // 224, 3), dtype=np.uint8)
    store = MemoryFrameStore()
    store.add("clip", frames=frames)
    words = " ".join(tiny.tokenizer_corpus()).split()
    prompt = video_messages(text_of(processor.tokenizer, words, args.prompt_tokens))
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
        args=GRPOConfig(
            output_dir=str(tmp / "out"),
            num_generations=args.group_size,
            per_device_train_batch_size=args.group_size,
            max_completion_length=args.completion_tokens,
            beta=0.04,
            use_cpu=True,
            bf16=False,
            activation_checkpointing=False,  # as the grpo stage (it keeps no cache to share)
            report_to=[],
        ),
        train_dataset=Dataset.from_list([{"prompt": prompt, "clip_id": "clip"}]),
        processing_class=processor,
        frame_store=store,
    )
    torch.manual_seed(0)
    return trainer, processor, store, prompt, words


def reference_batch(trainer, processor, store, prompt, args, group: int):
    """A group as TRL lays it out: G copies of the tokenized prompt, then G completions."""
    import torch

    from ebmrl.models.vlm import encode
    from ebmrl.train.video_grpo import VideoRows

    encoded = encode(processor, [prompt], [store.frames("clip")])
    G = args.group_size
    g = torch.Generator().manual_seed(group)
    completions = torch.randint(
        20, len(processor.tokenizer), (G, args.completion_tokens), generator=g
    )
    ids = torch.cat([encoded["input_ids"].repeat(G, 1), completions], 1)
    mask = torch.ones_like(ids)
    grid = encoded["video_grid_thw"]
    trainer._video_rows = VideoRows(
        [encoded["pixel_values_videos"]] * G,
        grid.repeat(G, 1),
        encoded["second_per_grid_ts"].repeat(G),
    )
    return ids, mask, int((encoded["input_ids"] == trainer._video_token_id).sum())


def pcg_completions(words: list[str], tokenizer, args, group: int) -> list[str]:
    """G completions: a trace of about ``completion_tokens`` tokens, then an answer."""
    out = []
    for i in range(args.group_size):
        start = 97 * (group * args.group_size + i)
        perception = text_of(tokenizer, words[start:], args.completion_tokens * 2 // 3)
        think = text_of(tokenizer, words[start + 400 :], args.completion_tokens // 4)
        out.append(f"<perception>{perception}</perception><think>{think}</think><answer>x</answer>")
    return out


def measure(run, model, groups: int):
    from ebmrl.models.shared_prefix import VisionCalls

    run(-1)  # warm-up
    times, values = [], []
    with VisionCalls(model) as vision, LanguagePositions(model) as positions:
        for group in range(groups):
            started = time.perf_counter()
            values.append(run(group))
            times.append(time.perf_counter() - started)
    return {
        "calls": vision.calls / groups,
        "videos": vision.items / groups,
        "positions": positions.count / groups,
        "seconds": statistics.median(times),
        "values": values,
    }


def print_table(title: str, shared: dict, rows: dict) -> None:
    print(f"\n{title}")
    print(f"  {'per group':<34}{'shared':>12}{'per row':>12}{'ratio':>9}")
    for label, key, fmt in (
        ("vision-tower calls", "calls", "{:.0f}"),
        ("videos encoded", "videos", "{:.0f}"),
        ("language-model positions", "positions", "{:,.0f}"),
        ("wall time (median, s)", "seconds", "{:.3f}"),
    ):
        a, b = shared[key], rows[key]
        print(f"  {label:<34}{fmt.format(a):>12}{fmt.format(b):>12}{b / a:>8.2f}x")


# ------------------------------------------------------------------ FLOP arithmetic
def text_flops(positions: int, context_end: int, scored: int, cfg=QWEN_7B) -> float:
    """Forward FLOPs of ``positions`` new tokens whose last one sees ``context_end``
    tokens (causal attention over the cache), with ``scored`` LM-head positions."""
    d, hd = cfg["d"], cfg["head_dim"]
    per_token = 2 * d * (cfg["heads"] * hd + 2 * cfg["kv_heads"] * hd)  # q, k, v
    per_token += 2 * cfg["heads"] * hd * d + 2 * 3 * d * cfg["ffn"]  # o, SwiGLU MLP
    start = context_end - positions
    attended = positions * (start + context_end + 1) / 2  # sum of contexts
    attention = 2 * 2 * cfg["heads"] * hd * attended  # QK^T and AV
    return cfg["layers"] * (per_token * positions + attention) + 2 * d * cfg["vocab"] * scored


def vision_flops(patches: int, cfg=VISION_7B) -> float:
    d = cfg["d"]
    per_patch = 2 * 4 * d * d + 2 * 3 * d * cfg["ffn"]
    attention = (
        2
        * 2
        * d
        * patches
        * (cfg["full_blocks"] * patches + (cfg["depth"] - cfg["full_blocks"]) * cfg["window"])
    )
    embed = 2 * 1176 * d * patches
    merged = patches // cfg["merge"]
    merger = 2 * merged * (4 * d * 4 * d + 4 * d * cfg["out"])
    return cfg["depth"] * per_patch * patches + attention + embed + merger


def paper_step(
    video_tokens: int, prompt_tokens: int, completion: int, trace: int, ref: int, G: int
):
    """FLOPs of one prompt's share of a paper-scale GRPO step (G completions)."""
    prompt = video_tokens + prompt_tokens
    vision = vision_flops(video_tokens * 4)
    row = prompt + completion
    one_row = vision + text_flops(row, row, completion)
    generation = G * (vision + text_flops(row, row, completion))  # prefill + decode, per row
    ref_rows = G * one_row
    ref_shared = (
        vision
        + text_flops(prompt - 1, prompt - 1, 0)
        + G * text_flops(completion + 1, row, completion)
    )
    policy = (3 * ref_rows, 3 * ref_shared)  # forward + backward
    pcg_len = prompt + trace + ref
    pcg_rows = (
        vision
        + text_flops(prompt + ref, prompt + ref, ref)
        + G * (vision + text_flops(pcg_len, pcg_len, ref))
    )
    pcg_shared = (
        vision
        + text_flops(prompt, prompt, 0)
        + text_flops(ref, prompt + ref, ref)
        + G * text_flops(trace + ref, pcg_len, ref)
    )
    return {
        "generation": generation,
        "reference pass": (ref_rows, ref_shared),
        "policy forward + backward": policy,
        "PCG": (pcg_rows, pcg_shared),
    }


def print_projection(args) -> None:
    for completion in (args.completion_tokens, 1024):
        trace = completion * 11 // 12
        s = paper_step(1024, args.prompt_tokens, completion, trace, 30, args.group_size)
        before = after = s["generation"]
        print(
            f"\nQwen2.5-VL-7B, one prompt's group per device step: 1,024 video + "
            f"{args.prompt_tokens} prompt tokens, G={args.group_size}, {completion}-token "
            f"completions (PCG: {trace}-token trace, 30-token reference), TFLOPs"
        )
        print(f"  {'generation':<28}{s['generation'] / 1e12:>10.1f}")
        for name in ("reference pass", "policy forward + backward", "PCG"):
            rows, shared = s[name]
            before += rows
            after += shared
            print(
                f"  {name:<28}{rows / 1e12:>10.1f} -> {shared / 1e12:.1f} "
                f"({rows / shared:.1f}x fewer)"
            )
        print(
            f"  {'step':<28}{before / 1e12:>10.1f} -> {after / 1e12:.1f} "
            f"({100 * (1 - after / before):.0f}% less compute per step)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--completion-tokens", type=int, default=300)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--frame-pixels", type=int, default=224 * 448)
    args = parser.parse_args()

    import torch

    from ebmrl.rewards.likelihood import VideoLikelihoodScorer
    from ebmrl.rewards.pcg import PerceptualCognitiveReward

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, processor, store, prompt, words = setup(Path(tmp), args)
    ref = trainer.ref_model
    G = args.group_size
    results = {}
    video_tokens = 0
    policy = trainer.model
    for shared in (True, False):

        def reference(group: int, shared=shared):
            nonlocal video_tokens
            ids, mask, video_tokens = reference_batch(
                trainer, processor, store, prompt, args, group
            )
            trainer.shared_prefix = shared
            with torch.no_grad():
                logps = trainer._get_per_token_logps_and_entropies(
                    ref, ids, mask, args.completion_tokens, batch_size=G
                )[0]
            return logps

        scorer = VideoLikelihoodScorer(ref, processor, store, batch_size=16, shared_prefix=shared)

        def pcg(group: int, scorer=scorer):
            reward = PerceptualCognitiveReward(scorer, max_block_chars=None)  # fresh baseline
            texts = pcg_completions(words, processor.tokenizer, args, group)
            reference_reply = text_of(processor.tokenizer, words[group * 7 + 3 :], 30)
            return reward.score(
                texts, [prompt] * G, ["clip"] * G, [reference_reply] * G, [f"p{group}"] * G
            ).values

        def policy_step(group: int, shared=shared):
            ids, mask, _ = reference_batch(trainer, processor, store, prompt, args, group)
            trainer.shared_prefix = shared
            policy.train()
            policy.zero_grad()
            logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
                policy, ids, mask, args.completion_tokens, batch_size=G, compute_entropy=True
            )
            (-logps.mean() - 0.01 * entropies.mean()).backward()
            grads = [p.grad.flatten() for p in policy.parameters() if p.grad is not None]
            return logps.detach(), torch.cat(grads)

        results["ref", shared] = measure(reference, ref, args.groups)
        results["policy", shared] = measure(policy_step, policy, args.groups)
        results["pcg", shared] = measure(pcg, ref, args.groups)

    for a, b in zip(results["ref", True]["values"], results["ref", False]["values"], strict=True):
        assert float((a - b).abs().max()) < 1e-4
    for a, b in zip(results["pcg", True]["values"], results["pcg", False]["values"], strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
    pairs = zip(results["policy", True]["values"], results["policy", False]["values"], strict=True)
    for (logps, grad), (row_logps, row_grad) in pairs:
        assert float((logps - row_logps).abs().max()) < 1e-4
        assert float((grad - row_grad).abs().max()) <= 1e-4 * float(row_grad.abs().max())
    prompt_len = int(reference_batch(trainer, processor, store, prompt, args, 0)[0].shape[1])
    print(
        f"tiny Qwen2.5-VL, CPU, 1 thread: {video_tokens} video tokens, "
        f"{prompt_len - args.completion_tokens - video_tokens} other prompt tokens, "
        f"G={G}, {args.completion_tokens}-token completions, {args.groups} groups"
    )
    print_table(
        f"reference pass (batch {G}: one prompt's group per device step)",
        results["ref", True],
        results["ref", False],
    )
    print_table(
        f"policy pass under training, forward + backward (batch {G})",
        results["policy", True],
        results["policy", False],
    )
    print_table("PCG (baseline + G traces, batch 16)", results["pcg", True], results["pcg", False])
    print(
        "same log-probs, rewards and policy gradients on both paths (checked: |diff| < 1e-4, "
        "gradients relative to their largest entry)"
    )
    print_projection(args)


if __name__ == "__main__":
    main()
