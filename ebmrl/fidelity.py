"""How a params file compares with what the authors' released code trains.

``fidelity_rows(params)`` lists, for every choice method.md section 6 and issue 11 name,
the value this params file sets next to the authors' value (read from their launch
script, trainer, reward servers and pre-processing). ``ebmrl check-params`` prints the
table; with the paper profile applied every configurable row matches, and the few rows
that are code, not settings, say where our behaviour differs on purpose (README,
"Fidelity").
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ebmrl.config import Params


@dataclass(frozen=True)
class Row:
    """One choice: the value in the params file (``ours``) and the authors' value."""

    setting: str
    ours: Any
    authors: Any
    fixed: bool = False  # code, not a params key: the same whatever the profile

    @property
    def matches(self) -> bool:
        return self.ours == self.authors


Getter = Callable[[Params], Any]

# (setting, how to read it from Params, the authors' value)
SETTINGS: tuple[tuple[str, Getter, Any], ...] = (
    ("tags", lambda p: list(p.tags), ["vision", "think", "answer"]),
    ("models.vlm", lambda p: p.models.vlm, "Qwen/Qwen2.5-VL-7B-Instruct"),
    (
        "models.clip",
        lambda p: "/".join(filter(None, (p.models.clip, p.models.clip_pretrained))),
        "ViT-L-14/openai",
    ),
    ("models.text_encoder", lambda p: p.models.text_encoder, "microsoft/deberta-xlarge-mnli"),
    ("video.fps", lambda p: p.video.fps, 2.0),
    ("video.min_frames", lambda p: p.video.min_frames, 4),
    ("video.max_frames", lambda p: p.video.max_frames, 16),
    ("video.max_pixels_per_frame", lambda p: p.video.max_pixels_per_frame, 100_352),
    (
        "video.clip_frame_schedule",
        lambda p: [n for _, n in p.video.clip_schedule()],
        [4, 8, 16, 32],
    ),
    (
        "rewards.weights",
        lambda p: dict(p.rewards.weights),
        {"answer": 1.0, "format": 1.0, "clip": 0.8, "pcg": 0.8},
    ),
    ("rewards.aggregation", lambda p: p.rewards.aggregation, "normalize_then_sum"),
    ("rewards.clip.mode", lambda p: p.rewards.clip.mode, "max"),
    ("rewards.clip.topk_fraction", lambda p: p.rewards.clip.topk_fraction, 0.2),
    ("rewards.clip.sentence_rule", lambda p: p.rewards.clip.sentence_rule, "authors"),
    ("rewards.clip.max_sentences", lambda p: p.rewards.clip.max_sentences, None),
    ("rewards.pcg.max_block_chars", lambda p: p.rewards.pcg.max_block_chars, None),
    ("rewards.pcg.max_sequence_tokens", lambda p: p.rewards.pcg.max_sequence_tokens, 16_384),
    ("rewards.pcg.leak_filter.enabled", lambda p: p.rewards.pcg.leak_filter.enabled, False),
    ("sft.target_layout", lambda p: p.sft.target_layout, "released"),
    ("sft.learning_rate", lambda p: p.sft.learning_rate, 3e-6),
    ("sft.lr_scheduler", lambda p: p.sft.lr_scheduler, "linear"),
    ("sft.warmup_ratio", lambda p: p.sft.warmup_ratio, 0.1),
    ("sft.max_grad_norm", lambda p: p.sft.max_grad_norm, 5.0),
    ("sft.epochs", lambda p: p.sft.epochs, 4),
    ("grpo.group_size", lambda p: p.grpo.group_size, 8),
    ("grpo.per_device_batch_size", lambda p: p.grpo.per_device_batch_size, 8),
    ("grpo.gradient_accumulation_steps", lambda p: p.grpo.gradient_accumulation_steps, 1),
    ("grpo.temperature", lambda p: p.grpo.temperature, 1.0),
    ("grpo.top_p", lambda p: p.grpo.top_p, 0.95),
    ("grpo.top_k", lambda p: p.grpo.top_k, 50),
    ("grpo.learning_rate", lambda p: p.grpo.learning_rate, 5e-7),
    ("grpo.lr_scheduler", lambda p: p.grpo.lr_scheduler, "cosine"),
    ("grpo.weight_decay", lambda p: p.grpo.weight_decay, 0.01),
    ("grpo.max_grad_norm", lambda p: p.grpo.max_grad_norm, 5.0),
    ("grpo.beta", lambda p: p.grpo.beta, 0.04),
    ("grpo.loss_type", lambda p: p.grpo.loss_type, "grpo"),
    ("grpo.num_iterations", lambda p: p.grpo.num_iterations, 1),
    ("grpo.kl_clamp", lambda p: p.grpo.kl_clamp, 10.0),
    ("grpo.kl_bias_correction", lambda p: p.grpo.kl_bias_correction, False),
    ("grpo.max_completion_length", lambda p: p.grpo.max_completion_length, 1024),
    (
        "evaluate.decoding (T, p, tokens)",
        lambda p: {
            "temperature": p.evaluate.decoding.temperature,
            "top_p": p.evaluate.decoding.top_p,
            "max_new_tokens": p.evaluate.max_new_tokens,
        },
        {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 2048},
    ),
    (
        "evaluate.systems[].prompt",
        lambda p: sorted({s.prompt for s in p.evaluate.systems}),
        ["cot", "ebm", "vanilla"],
    ),
    (
        "evaluate.judge (protocol, subset)",
        lambda p: {
            "protocol": p.evaluate.judge.protocol,
            "n": p.evaluate.judge.subset_size() or "all",
        },
        {"protocol": "authors", "n": 100},
    ),
    (
        "evaluate.judge frames (n,src,px)",
        lambda p: {
            "frames": p.evaluate.judge.frames,
            "source": p.evaluate.judge.frame_source,
            "side": p.evaluate.judge.frame_max_side,
        },
        {"frames": 8, "source": "clip", "side": 512},
    ),
    (
        "videoqa (protocol, frames)",
        lambda p: {"protocol": p.videoqa.protocol, "frames": p.videoqa.frames},
        {"protocol": "authors", "frames": 32},
    ),
)

# Behaviour that is code, the same in every profile and the same as the authors'.
SAME_IN_CODE = (
    "answer = first <answer> to first </answer>; CLIP text uncut before its 77 tokens; "
    "SentTopK k = max(1, floor(0.2 T)); PCG trace = their regex search; "
    "advantages = combine (eps 1e-6, no batch rescale); judge: T 0, one prompt per "
    "sample, shuffled labels; spoken line = <answer> (any case, unclosed: to the end) "
    "else the text minus think/perception"
)

# Behaviour that is code and differs on purpose: (what, ours, the authors').
DELIBERATE: tuple[tuple[str, str, str], ...] = (
    ("reward constant in a group", "contributes exactly 0", "(r - mean) / 1e-6"),
    ("clip without CLIP embeddings", "error before training", "CLIP reward -1"),
    ("prompt wording", "our own words, same rules", "their text"),
    ("judge reply", "one JSON object, seeded runs", "their text blocks, unseeded"),
    ("judge frames under 512 px", "kept as they are", "enlarged to 512"),
)


def fidelity_rows(params: Params) -> list[Row]:
    """Every choice of the table, in order: settings first, then deliberate differences."""
    rows = [Row(name, get(params), authors) for name, get, authors in SETTINGS]
    rows += [Row(name, ours, authors, fixed=True) for name, ours, authors in DELIBERATE]
    return rows


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value.values())
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fidelity_table(params: Params, width: int = 30) -> str:
    """The rows as a one-screen text table: setting, this file, the authors, a mark."""
    rows = fidelity_rows(params)
    differ = sum(1 for r in rows if not r.matches and not r.fixed)
    lines = [
        "Fidelity to the authors' released code (method.md section 6; README, Fidelity):",
        f"  {'setting':<34}{'this file':<{width}}{'authors':<{width}}",
    ]
    for row in rows:
        mark = "" if row.matches else ("  (deliberate)" if row.fixed else "  <- differs")
        lines.append(
            f"  {row.setting:<34}{_show(row.ours)[: width - 1]:<{width}}"
            f"{_show(row.authors)[: width - 1]:<{width}}{mark}".rstrip()
        )
    lines += textwrap.wrap(
        f"same in code: {SAME_IN_CODE}", 96, initial_indent="  ", subsequent_indent="    "
    )
    if differ:
        lines.append(
            f"  {differ} setting(s) differ from the authors'; `ebmrl use-profile paper` sets them."
        )
    else:
        lines.append("  every setting is the authors' (the paper profile)")
    return "\n".join(lines)
