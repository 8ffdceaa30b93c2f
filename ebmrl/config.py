"""Typed, validated view of ``params.yaml``.

``load(path)`` reads the file, validates every section and returns a frozen ``Params``.
Anything wrong (unknown or duplicated key, wrong type, out-of-range value, YAML syntax
error) raises ``ConfigError`` before any work starts, with a message that names the key
path (``rewards.weights.clip``) and the offending value. Each stage reads only its own
section (``params.grpo``, ``params.rewards``, ...), which is also what dvc.yaml lists
as that stage's ``params``.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ebmrl.tags import TagNames

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml is unreadable or invalid. ``problems`` lists (key path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        if len(problems) == 1:  # one line, as every stage's error line reads
            (key, message), *_ = problems
            super().__init__(f"{source}: {key}: {message}")
            return
        lines = [f"{source}: {len(problems)} problem(s) in the parameters:"]
        lines += [f"  - {key}: {message}" for key, message in problems]
        super().__init__("\n".join(lines))


class Section(BaseModel):
    """Base of every config block: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


PositiveInt = Annotated[int, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(gt=0, le=1)]


# --------------------------------------------------------------------------- models
class ModelsSection(Section):
    """Which models the pipeline loads. A value is a hub id or a local folder."""

    vlm: str = "models/tiny/qwen2_5_vl"
    clip: str = "models/tiny/clip"
    # open_clip "pretrained" tag for hub CLIP models (e.g. "openai"); ignored for folders.
    clip_pretrained: str | None = None
    text_encoder: str = "models/tiny/minilm"
    text_encoder_layers: PositiveInt = 5
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"


class TinyClipSection(Section):
    """Contrastive training of the tiny CLIP on the demo's scene grammar
    (``ebmrl.models.clip_training``); the frame geometry is the demo's (``demo``)."""

    steps: Annotated[int, Field(ge=0)] = 1500
    batch_size: Annotated[int, Field(ge=2)] = 64
    learning_rate: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: NonNegFloat = 0.01
    warmup_steps: Annotated[int, Field(ge=0)] = 30
    train_scenes: PositiveInt = 512
    frames_per_scene: PositiveInt = 2
    eval_scenes: Annotated[int, Field(ge=2)] = 64
    torch_threads: PositiveInt = 1

    @model_validator(mode="after")
    def _batch_fits(self) -> TinyClipSection:
        if self.batch_size > self.train_scenes * self.frames_per_scene:
            raise ValueError(
                f"batch_size ({self.batch_size}) exceeds the training frames "
                f"({self.train_scenes} scenes x {self.frames_per_scene})"
            )
        return self


class TinyVlmSection(Section):
    """Caption pretraining of the tiny VLM on the demo's scene grammar
    (``ebmrl.models.caption_training``): the base sees, as a real base VLM does."""

    steps: Annotated[int, Field(ge=0)] = 1000
    batch_size: PositiveInt = 8
    learning_rate: Annotated[float, Field(gt=0)] = 3e-3
    train_scenes: Annotated[int, Field(ge=2)] = 256
    frames: Annotated[int, Field(ge=2, multiple_of=2)] = 4  # a multiple of the temporal patch
    eval_scenes: PositiveInt = 32
    # Then captions after long, varied text (caption_training: the base must see behind a
    # role-play prompt's thousand tokens, as a real base does).
    long_context_steps: Annotated[int, Field(ge=0)] = 150
    long_context_batch_size: PositiveInt = 4
    long_context_words: Annotated[int, Field(ge=0)] = 900
    long_context_frames: Annotated[int, Field(ge=2, multiple_of=2)] = 8
    torch_threads: PositiveInt = 1

    @model_validator(mode="after")
    def _batch_fits(self) -> TinyVlmSection:
        for name in ("batch_size", "long_context_batch_size"):
            if getattr(self, name) > self.train_scenes:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) exceeds train_scenes ({self.train_scenes})"
                )
        return self


class TinyModelsSection(Section):
    out: str = "models/tiny"
    seed: int = 0
    vlm: TinyVlmSection = TinyVlmSection()
    clip: TinyClipSection = TinyClipSection()
    metrics: str = "metrics/tiny_models.json"  # held-out captions (VLM), retrieval (CLIP)


# ----------------------------------------------------------------------------- demo
class DemoSection(Section):
    """Procedurally rendered demo clips and role-play samples (offline stand-in data)."""

    out: str = "data/demo"
    seed: int = 0
    num_clips: Annotated[int, Field(ge=2, le=10_000)] = 40
    num_sessions: Annotated[int, Field(ge=2)] = 10
    samples_per_clip: Annotated[int, Field(ge=1, le=20)] = 2
    # Share of the sessions whose samples carry a reference trace (SFT's material).
    traced_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    width: Annotated[int, Field(ge=64, le=1920, multiple_of=64)] = 128
    height: Annotated[int, Field(ge=16, le=1080, multiple_of=2)] = 96
    fps: Annotated[int, Field(ge=1, le=60)] = 8
    min_duration_s: Annotated[float, Field(gt=0)] = 2.0
    max_duration_s: Annotated[float, Field(gt=0)] = 18.0

    @model_validator(mode="after")
    def _durations_ordered(self) -> DemoSection:
        if self.max_duration_s < self.min_duration_s:
            raise ValueError(
                f"max_duration_s ({self.max_duration_s}) must be >= min_duration_s "
                f"({self.min_duration_s})"
            )
        if self.num_sessions > self.num_clips:
            raise ValueError(
                f"num_sessions ({self.num_sessions}) must be <= num_clips ({self.num_clips})"
            )
        return self


# ---------------------------------------------------------------------------- video
class FrameStep(Section):
    """Clips shorter than ``max_duration_s`` get ``frames`` frames (null = no limit)."""

    max_duration_s: Annotated[float, Field(gt=0)] | None
    frames: PositiveInt


def _paper_schedule() -> list[FrameStep]:
    return [
        FrameStep(max_duration_s=5, frames=4),
        FrameStep(max_duration_s=15, frames=8),
        FrameStep(max_duration_s=60, frames=16),
        FrameStep(max_duration_s=None, frames=32),
    ]


class VideoSection(Section):
    """Two samplings per clip (``ebmrl.video``), as the authors have them.

    The policy's frames (what the VLM sees), by qwen-vl-utils' rules: about ``fps``
    frames a second, an even count within [``min_frames``, ``max_frames``], each resized
    to at most about ``max_pixels_per_frame`` (at least ``min_pixels_per_frame``), sides
    multiples of 28. The CLIP reward's frames, by clip duration
    (``clip_frame_schedule``), embedded at full resolution.
    """

    fps: Annotated[float, Field(gt=0, le=120)] = 2.0
    min_frames: Annotated[int, Field(ge=2, le=768)] = 4
    max_frames: Annotated[int, Field(ge=2, le=768)] = 8
    min_pixels_per_frame: Annotated[int, Field(ge=28 * 28)] = 4 * 28 * 28
    max_pixels_per_frame: Annotated[int, Field(ge=28 * 28)] = 128 * 28 * 28
    clip_frame_schedule: list[FrameStep] = Field(default_factory=_paper_schedule, min_length=1)

    def clip_schedule(self) -> tuple[tuple[float | None, int], ...]:
        """The CLIP schedule as ``(max_duration_s, frames)`` pairs for ``ebmrl.video``."""
        return tuple((s.max_duration_s, s.frames) for s in self.clip_frame_schedule)

    @field_validator("clip_frame_schedule")
    @classmethod
    def _schedule_is_increasing(cls, steps: list[FrameStep]) -> list[FrameStep]:
        bounds = [s.max_duration_s for s in steps]
        if bounds[-1] is not None:
            raise ValueError("the last step must have max_duration_s: null (no upper bound)")
        if any(b is None for b in bounds[:-1]):
            raise ValueError("only the last step may have max_duration_s: null")
        finite = [b for b in bounds[:-1] if b is not None]
        if any(b2 <= b1 for b1, b2 in zip(finite, finite[1:], strict=False)):
            raise ValueError(f"max_duration_s must increase step by step, got {finite}")
        return steps

    @model_validator(mode="after")
    def _ranges(self) -> VideoSection:
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) > max_frames ({self.max_frames})")
        if self.min_pixels_per_frame > self.max_pixels_per_frame:
            raise ValueError(
                f"min_pixels_per_frame ({self.min_pixels_per_frame}) > max_pixels_per_frame "
                f"({self.max_pixels_per_frame})"
            )
        return self


# --------------------------------------------------------------------- data stages
VIDEO_EXTENSIONS = ("mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "flv", "wmv")


class IngestLimitsSection(Section):
    """Videos outside these bounds are quarantined as absurd (broken metadata, not film)."""

    min_duration_s: Annotated[float, Field(gt=0)] = 0.25
    max_duration_s: Annotated[float, Field(gt=0)] = 4 * 3600.0
    min_fps: Annotated[float, Field(gt=0)] = 1.0
    max_fps: Annotated[float, Field(gt=0)] = 240.0
    min_side: Annotated[int, Field(ge=1)] = 16
    max_side: Annotated[int, Field(ge=1)] = 8192
    min_frames: Annotated[int, Field(ge=1)] = 2

    @model_validator(mode="after")
    def _bounds_ordered(self) -> IngestLimitsSection:
        for low, high in (
            ("min_duration_s", "max_duration_s"),
            ("min_fps", "max_fps"),
            ("min_side", "max_side"),
        ):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(
                    f"{low} ({getattr(self, low)}) must be < {high} ({getattr(self, high)})"
                )
        return self


class IngestSection(Section):
    """Find, probe and record the source videos; import released-format records."""

    source: str = Field("data/demo/videos", min_length=1)  # a folder or s3://bucket/prefix
    out: str = "data/ingest"
    # Released-format record files (local or s3://); their video paths are relative to them.
    records: list[str] = Field(default_factory=lambda: ["data/demo/samples.json"])
    extensions: list[str] = Field(default_factory=lambda: sorted(VIDEO_EXTENSIONS), min_length=1)
    strict: bool = False  # any quarantined file or rejected record fails the stage
    verify_decode: bool = True  # decode first, middle and last frame (catches truncation)
    workers: Annotated[int, Field(ge=1, le=256)] = 4  # files probed at once (threads)
    limits: IngestLimitsSection = IngestLimitsSection()

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, values: list[str]) -> list[str]:
        return sorted({v.lower().lstrip(".") for v in values})


class FramesSection(Section):
    """Frame sampling (schedule and size: ``video``) and CLIP embeddings into shards."""

    ingest: str = "data/ingest"
    out: str = "data/frames"
    workers: Annotated[int, Field(ge=0, le=256)] = 2  # decoding processes (0: in-process)
    shard_size_mb: Annotated[float, Field(gt=0, le=16384)] = 64.0
    compress: bool = True  # zlib inside the shards (lossless)
    embed_batch_size: Annotated[int, Field(ge=1, le=4096)] = 64


class RequestsSection(Section):
    """How requests reach a backend: time limit, requests in flight, retries, API key."""

    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: Annotated[float, Field(gt=0)] = 120.0
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 4
    max_retries: Annotated[int, Field(ge=0, le=100)] = 5
    backoff_s: NonNegFloat = 1.0
    max_backoff_s: NonNegFloat = 60.0
    image_format: Literal["jpeg", "png"] = "jpeg"


class BackendSection(RequestsSection):
    """A text/vision generation backend: a local transformers VLM or an OpenAI-compatible URL."""

    kind: Literal["local", "http"] = "local"
    model: str | None = None  # null: models.vlm (local), or the served model name (http)
    base_url: str | None = None  # http: e.g. http://127.0.0.1:8000/v1
    # local: torch CPU threads (null: torch's default). Small models run fastest on one.
    torch_threads: Annotated[int, Field(ge=1, le=1024)] | None = 1

    @model_validator(mode="after")
    def _http_needs_url(self) -> BackendSection:
        if self.kind == "http" and not (self.base_url or "").startswith(("http://", "https://")):
            raise ValueError(
                f"kind: http needs base_url starting with http:// or https:// (got {self.base_url!r})"
            )
        return self


class GenerationSection(Section):
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = 32
    temperature: Annotated[float, Field(ge=0, le=5)] = 1.0
    top_p: Probability = 1.0
    seed: int = 0


class AnnotateSection(Section):
    """Visual descriptions of the clips by a VLM, cached per (clip, prompt, model)."""

    ingest: str = "data/ingest"
    frames: str = "data/frames"
    out: str = "data/annotate"
    cache: str = "data/annotate_cache"  # append-only; survives crashes and reruns
    max_frames: Annotated[int, Field(ge=1, le=256)] = 8  # frames sent per clip
    max_words: Annotated[int, Field(ge=1, le=10_000)] = 150  # asked-for description length
    backend: BackendSection = BackendSection()
    generation: GenerationSection = GenerationSection()


class SynthesizeSection(Section):
    """Training samples: film lines (raw_lines) or LLM dialogues, traces, session split."""

    ingest: str = "data/ingest"
    annotations: str = "data/annotate"
    profiles: str = "data/demo/profiles.json"
    out: str = "data/dataset"
    cache: str = "data/synthesize_cache"
    mode: Literal["raw_lines", "llm"] = "raw_lines"
    # keep: traces as given (no LLM); generate_missing / regenerate: write them by LLM.
    traces: Literal["keep", "generate_missing", "regenerate"] = "keep"
    source: str | None = None  # film of the characters (llm mode); null: the profiles' only film
    strategies: list[Literal["join", "ask"]] = Field(
        default_factory=lambda: ["join", "ask"], min_length=1
    )
    samples_per_clip: Annotated[int, Field(ge=1, le=20)] = 2
    history_turns: Annotated[int, Field(ge=0, le=12)] = 2  # join: turns before the user's line
    # A trace whose share of the reply's word n-grams reaches this is a copy of the reply.
    copy_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3  # trace generations before dropping
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: int = 0
    backend: BackendSection = BackendSection()
    generation: GenerationSection = GenerationSection(max_tokens=128)


# -------------------------------------------------------------------------- rewards
# The rewards ebmrl ships, in the order TRL receives them (ebmrl.rewards.registry builds
# them; it is not imported here because it loads torch).
BUILTIN_REWARDS: tuple[str, ...] = ("format", "answer", "clip", "pcg")
RewardName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=40)]
# A reward function of the user's: "package.module:function".
FunctionPath = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]


def import_callable(path: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function; ImportError, AttributeError or
    TypeError (not callable) otherwise."""
    module, _, attribute = path.partition(":")
    function = getattr(importlib.import_module(module), attribute)
    if not callable(function):
        raise TypeError(f"{path} is not a function")
    return function


class KeyProblem(ValueError):
    """A validator's error about one key below the field it validates (the key is added
    to the reported path: ``rewards.weights.clpi``)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class AnswerRewardSection(Section):
    # BERTScore batch size (the scorer model and layer are models.text_encoder[_layers]).
    batch_size: PositiveInt = 64


class ClipRewardSection(Section):
    mode: Literal["max", "sent_topk"] = "max"
    # sent_topk: each sentence averages its top max(1, floor(topk_fraction x T)) frames.
    topk_fraction: Probability = 0.2
    # sent_topk: sentences per perception sent to CLIP (beyond: counted as truncation;
    # null: no limit, as the authors).
    max_sentences: PositiveInt | None = 16
    # sent_topk sentence splitter: ebmrl (ours: sentence ends, keeps short sentences) or
    # authors (split at every . ! ? and newline, keep pieces longer than 5 characters).
    sentence_rule: Literal["ebmrl", "authors"] = "ebmrl"


class LeakFilterSection(Section):
    """Drop <think> sentences too close to the reference before PCG scores them. Not used
    by the authors' released training script; their separate trainer variant uses
    all-MiniLM-L6-v2 with a cosine threshold of 0.4 (one version) or 0.2 (another)."""

    enabled: bool = False
    threshold: Annotated[float, Field(ge=-1, le=1)] = 0.5
    # Sentence encoder (hub id or folder), e.g. sentence-transformers/all-MiniLM-L6-v2.
    model: str = Field("models/tiny/minilm", min_length=1)


class PcgRewardSection(Section):
    leak_filter: LeakFilterSection = LeakFilterSection()
    batch_size: PositiveInt = 16  # queries per reference-model forward pass
    # Perception/think content cut (pathological output guard, reported); null: no cut.
    max_block_chars: PositiveInt | None = 8192
    # A scored sequence longer than this (video tokens included) scores 0, counted
    # (the authors: 16,384); null: no limit.
    max_sequence_tokens: PositiveInt | None = 16_384


class RewardsSection(Section):
    # Rewards of your own, by name: "module:function" (see README, "Add a reward"); each
    # needs a weight below like the built-in ones.
    functions: dict[RewardName, FunctionPath] = Field(default_factory=dict)
    # One weight per reward (built-in and functions); 0 switches a reward off (its model
    # is not loaded). Advantages: sum over rewards of weight x group z-score.
    weights: dict[str, NonNegFloat] = Field(
        default_factory=lambda: {"answer": 1.0, "format": 1.0, "clip": 0.8, "pcg": 0.8},
        validate_default=True,
    )
    aggregation: Literal["normalize_then_sum", "sum_then_normalize"] = "normalize_then_sum"
    answer: AnswerRewardSection = AnswerRewardSection()
    clip: ClipRewardSection = ClipRewardSection()
    pcg: PcgRewardSection = PcgRewardSection()

    @field_validator("functions")
    @classmethod
    def _not_a_builtin(cls, functions: dict[str, str]) -> dict[str, str]:
        for name, path in functions.items():
            if name in BUILTIN_REWARDS:
                raise KeyProblem(name, f"{name!r} is a built-in reward: choose another name")
            # Imported here so that a typo is reported before any work starts.
            try:
                import_callable(path)
            except (ImportError, AttributeError, TypeError) as exc:
                raise KeyProblem(name, f"cannot import {path}: {exc}") from None
        return functions

    @field_validator("weights")
    @classmethod
    def _one_weight_per_reward(cls, weights: dict[str, float], info: Any) -> dict[str, float]:
        registered = [*BUILTIN_REWARDS, *(info.data.get("functions") or {})]
        for name in weights:
            if name not in registered:
                hint = difflib.get_close_matches(name, registered, n=1)
                known = (
                    f"did you mean rewards.weights.{hint[0]}?"
                    if hint
                    else "rewards: " + ", ".join(registered)
                )
                raise KeyProblem(name, f"unknown key ({known})")
        for name in registered:
            if name not in weights:
                raise KeyProblem(name, "missing: every reward needs a weight (0 switches it off)")
        if not any(weights.values()):
            raise ValueError("all reward weights are 0: at least one reward must count")
        return weights


# ------------------------------------------------------------------------- training
class LoraSection(Section):
    enabled: bool = False
    r: PositiveInt = 8
    alpha: PositiveInt = 16
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class TrainingSection(Section):
    """Optimiser, schedule and checkpointing knobs shared by the SFT and GRPO stages."""

    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 5e-3
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.05
    weight_decay: NonNegFloat = 0.0
    # Gradient-norm clip (transformers' default 1.0; the authors: 5 in both stages).
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    per_device_batch_size: PositiveInt = 4
    gradient_accumulation_steps: PositiveInt = 1
    epochs: Annotated[float, Field(gt=0)] = 30
    # -1: run `epochs` epochs; otherwise stop after this many optimiser steps.
    max_steps: Annotated[int, Field(ge=-1)] = -1
    seed: int = 0
    logging_steps: PositiveInt = 5
    # Checkpoints every N optimiser steps; a rerun after a crash resumes from the last one.
    save_steps: PositiveInt = 25
    save_total_limit: PositiveInt = 2
    # CPU threads for torch (null: torch's default). 1 is fastest for tiny models on a
    # shared machine: idle OpenMP threads spin and slow every other process down.
    torch_threads: PositiveInt | None = 1
    # Recompute activations in the backward pass: far less memory for about a third more
    # compute (TRL turns it on unless told). Off for the tiny CPU demo; the authors: on.
    gradient_checkpointing: bool = False
    lora: LoraSection = LoraSection()

    @model_validator(mode="after")
    def _steps_are_not_zero(self) -> TrainingSection:
        if self.max_steps == 0:
            raise ValueError("max_steps: 0 trains nothing; use -1 (epochs) or a positive count")
        return self


class SftSection(TrainingSection):
    """CoT-SFT cold start on samples that carry a reference perception + think."""

    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 5e-3
    epochs: Annotated[float, Field(gt=0)] = 20
    # Longest tokenized sample (prompt + video tokens + completion); longer batches are refused.
    max_length: PositiveInt | None = None
    dataset: str = "data/dataset"
    frames: str = "data/frames"
    out: str = "models/sft"
    metrics: str = "metrics/sft.json"  # held-out format scores before/after (dvc metrics)
    # Held-out samples whose greedy generations are scored for format before/after training.
    eval_samples: Annotated[int, Field(ge=0)] = 8
    # The assistant target: tagged (ours: perception, think and reply stripped, one block
    # per line, in the tags in use) or released (the authors: the released process text,
    # a blank line, then the solution text, as written).
    target_layout: Literal["tagged", "released"] = "tagged"
    eval_max_new_tokens: PositiveInt = 160


class GrpoSection(TrainingSection):
    """EBM-RL GRPO from the SFT checkpoint (also the frozen reference model)."""

    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 1e-4
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "constant"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    per_device_batch_size: PositiveInt = 8
    gradient_accumulation_steps: PositiveInt = 2
    epochs: Annotated[float, Field(gt=0)] = 1
    max_steps: Annotated[int, Field(ge=-1)] = 40
    logging_steps: PositiveInt = 1
    save_steps: PositiveInt = 10
    group_size: Annotated[int, Field(ge=2)] = 8
    temperature: Annotated[float, Field(gt=0)] = 1.0
    top_p: Probability = 0.95
    # Sampling top-k (0: off, TRL's default; the authors sample with the generation
    # config's default 50 besides top-p).
    top_k: Annotated[int, Field(ge=0)] = 0
    beta: NonNegFloat = 0.04
    # TRL's loss aggregation: grpo = mean over each completion's tokens, then over
    # completions (the authors); dapo (TRL's default) = over all tokens of the batch.
    loss_type: Literal["grpo", "dapo", "bnpo", "dr_grpo"] = "dapo"
    # Optimisation passes per generated batch (1: the ratio is 1, no clipping acts).
    num_iterations: Annotated[int, Field(ge=1, le=16)] = 1
    # The k3 KL's log-ratio clamped to [-kl_clamp, kl_clamp] (the authors: 10); null: off.
    kl_clamp: Annotated[float, Field(gt=0)] | None = None
    # TRL 1.16 multiplies the KL by the importance ratio (unbiased reverse-KL gradient,
    # its default); the authors use the plain k3 estimator (false).
    kl_bias_correction: bool = True
    max_completion_length: PositiveInt = 160
    # Drop truncated completions from the loss (they never close </answer>).
    mask_truncated_completions: bool = False
    init_model: str = "models/sft/final"
    dataset: str = "data/dataset"
    frames: str = "data/frames"
    out: str = "models/grpo"
    metrics: str = "metrics/grpo.json"  # reward summary, first vs last steps (dvc metrics)
    log_history: str = "metrics/grpo_log.json"  # every logged step (dvc plots)
    # Log a table of sample completions with every reward every N steps.
    completions_every: PositiveInt = 5
    # Sample with vLLM colocated on the training GPU (needs CUDA and vLLM; README).
    use_vllm: bool = False
    vllm_gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.3
    vllm_enable_sleep_mode: bool = False
    # Every log-prob pass (reference, old policy, the policy under training) and PCG
    # scoring run each prompt + video once per group and only the completions on its
    # cached prefix; the same numbers and gradients (tested). Models that cannot share a
    # prefix run row by row anyway, and so does the policy pass under several processes
    # or with gradient checkpointing.
    shared_prefix: bool = True

    @field_validator("temperature")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        return v

    @model_validator(mode="after")
    def _generation_batch_fits_groups(self) -> GrpoSection:
        batch = self.per_device_batch_size * self.gradient_accumulation_steps
        if batch % self.group_size:
            raise ValueError(
                f"per_device_batch_size x gradient_accumulation_steps ({batch}) must be a multiple "
                f"of group_size ({self.group_size}): each prompt's group is generated together"
            )
        return self


# ----------------------------------------------------------------------- evaluation
SystemName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=40)]
JudgeMetricName = Literal["veg", "spc", "cn"]
# ebmrl: ours (the stricter reading); authors: as the authors' released scripts score.
Protocol = Literal["ebmrl", "authors"]


class EvalSystemSection(Section):
    """A system to evaluate: a model folder or hub id (null: ``models.vlm``), generated
    locally, or by an OpenAI-compatible endpoint serving it when ``base_url`` is set.

    ``prompt`` and ``frames`` make the paper's baselines without code: the base VLM with
    the three-block prompt (``ebm``, what training uses), a plain chain of thought
    (``cot``: think, then answer) or a direct answer (``vanilla``: the answer block
    alone); ``frames: false`` withholds the clip (a text-only role-play baseline, e.g.
    any OpenAI-compatible chat endpoint).
    """

    name: SystemName
    model: str | None = None
    base_url: str | None = None
    prompt: Literal["ebm", "cot", "vanilla"] = "ebm"
    frames: bool = True

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {value!r})")
        return value


def _default_systems() -> list[EvalSystemSection]:
    return [
        EvalSystemSection(name="base"),
        EvalSystemSection(name="sft", model="models/sft/final"),
        EvalSystemSection(name="grpo", model="models/grpo/final"),
    ]


def _unique_names(systems: list[EvalSystemSection]) -> list[EvalSystemSection]:
    names = [s.name for s in systems]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"system names must be unique, repeated: {repeated}")
    return systems


class PairwiseSection(Section):
    """A-vs-B judging in both orders (position-bias-free win/tie/loss counts)."""

    enabled: bool = True
    pairs: list[tuple[SystemName, SystemName]] = Field(default_factory=lambda: [("grpo", "base")])
    metrics: list[JudgeMetricName] | None = None  # null: judge.metrics

    @field_validator("pairs")
    @classmethod
    def _distinct(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for first, second in pairs:
            if first == second:
                raise ValueError(f"a pair compares two different systems, got {first!r} twice")
        return pairs


AUTHORS_JUDGE_SUBSET = 100  # the authors' judge scores a random 100 test samples


class JudgeSection(Section):
    """The VEG/SPC/CN judge: any OpenAI-compatible endpoint (``backend.kind: http``) or a
    local VLM; ``serve_local`` puts a local judge behind ``ebmrl serve``'s HTTP server
    inside the stage, so the demo runs the same HTTP path as a hosted judge.

    ``protocol``: ``ebmrl`` (ours) takes a reply only when it is entirely valid and
    records anything else as not scored (coverage reported); ``authors`` reads each
    candidate's score from the reply on its own, scores a candidate it cannot read 0 and
    averages that in (a reply with nothing readable drops the sample, as their script
    does), and judges a seeded random ``subset`` of the samples. With ``authors`` the
    metrics and the report carry both averages.
    """

    enabled: bool = True
    backend: BackendSection = BackendSection(max_retries=2, max_backoff_s=30.0)
    serve_local: bool = True
    protocol: Protocol = "ebmrl"
    # Judge a seeded random subset of this many evaluated samples (null: the protocol's
    # default: every sample with ebmrl, 100 with authors).
    subset: PositiveInt | None = None
    subset_seed: int = 42
    metrics: list[JudgeMetricName] = Field(
        default_factory=lambda: ["veg", "spc", "cn"], min_length=1
    )
    frames: Annotated[int, Field(ge=1, le=64)] = 8  # sent with VEG and SPC
    # clip: read from the raw clip (the frame store's record of it), as the authors;
    # store: picked from the policy's (fewer, smaller) stored frames.
    frame_source: Literal["clip", "store"] = "clip"
    frame_max_side: Annotated[int, Field(ge=32, le=4096)] = 512
    max_tokens: Annotated[int, Field(ge=16, le=32768)] = 48
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 1  # requests per judgement (re-asks)
    seed: int = 0  # label shuffling (and the backend's sampling seed)
    pairwise: PairwiseSection = PairwiseSection()

    @field_validator("metrics")
    @classmethod
    def _no_repeats(cls, metrics: list[str]) -> list[str]:
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"metrics repeat: {metrics}")
        return metrics

    @model_validator(mode="after")
    def _serve_needs_local(self) -> JudgeSection:
        if self.serve_local and self.backend.kind != "local":
            raise ValueError("serve_local: true serves a local judge: set backend.kind: local")
        return self

    def subset_size(self) -> int | None:
        """How many samples the judge scores (None: all)."""
        if self.subset is not None:
            return self.subset
        return AUTHORS_JUDGE_SUBSET if self.protocol == "authors" else None


class DecodingSection(Section):
    """How each system writes its role-play outputs. Temperature 0 is greedy (ours: the
    same text on every run); the authors sample at temperature 0.7 with top-p 0.9 (their
    runs are unseeded; ``seed`` makes ours repeatable)."""

    temperature: Annotated[float, Field(ge=0, le=5)] = 0.0
    top_p: Probability = 1.0
    seed: int = 0


class AutoMetricsSection(Section):
    bertscore: bool = True  # model: models.text_encoder
    clipscore: bool = True  # model: models.clip
    batch_size: PositiveInt = 64


# evaluate.<key> -> report.<key>: the report became a stage of its own.
MOVED_TO_REPORT = {
    "videoqa_metrics": "videoqa_metrics",
    "training_log": "training_log",
    "report_frames": "frames_per_sample",
}


class EvaluateSection(Section):
    """Judge + automatic metrics of each system on the test split (the report stage renders
    them)."""

    dataset: str = "data/dataset"
    frames: str = "data/frames"
    split: Literal["train", "test"] = "test"
    max_samples: PositiveInt | None = None  # the first N samples of the split (null: all)
    systems: list[EvalSystemSection] = Field(default_factory=_default_systems, min_length=1)
    max_new_tokens: PositiveInt = 160  # generation of each system's output
    decoding: DecodingSection = DecodingSection()
    # Requests to each system (an endpoint, or its local model): retries, concurrency.
    system_requests: RequestsSection = RequestsSection()
    cache: str = "data/eval_cache"  # outputs and judgements; reruns reuse them
    out: str = "reports/eval"  # results.json (every sample, every score; the report reads it)
    metrics: str = "metrics/eval.json"
    plot_data: str = "metrics/eval_plot.json"
    torch_threads: Annotated[int, Field(ge=1, le=1024)] | None = 1
    automatic: AutoMetricsSection = AutoMetricsSection()
    judge: JudgeSection = JudgeSection()

    _unique = field_validator("systems")(_unique_names)

    @model_validator(mode="before")
    @classmethod
    def _moved_to_report(cls, data: Any) -> Any:
        """Keys that left for the ``report`` section: say where, not only "unknown"."""
        if isinstance(data, dict):
            for old, new in MOVED_TO_REPORT.items():
                if old in data:
                    raise ValueError(
                        f"{old} moved to the report section (report.{new}): the report stage "
                        "renders the page from evaluate's and videoqa's results"
                    )
        return data

    @model_validator(mode="after")
    def _pairs_name_systems(self) -> EvaluateSection:
        names = {s.name for s in self.systems}
        for pair in self.judge.pairwise.pairs if self.judge.pairwise.enabled else ():
            unknown = [n for n in pair if n not in names]
            if unknown:
                raise ValueError(
                    f"judge.pairwise.pairs names {unknown}, not among the systems {sorted(names)}"
                )
        return self


class ReportSection(Section):
    """The offline HTML report, rendered after both ``evaluate`` and ``videoqa`` (which run
    side by side): evaluate's results, each sample's frames, the VideoQA tables, the GRPO
    reward curves."""

    results: str = "reports/eval/results.json"  # evaluate's results (<evaluate.out>/results.json)
    frames: str = "data/frames"  # the frame store: thumbnails of each sample's clip
    frames_per_sample: Annotated[int, Field(ge=0, le=64)] = 8
    videoqa_metrics: str | None = "metrics/videoqa"  # <videoqa.metrics> (null: no tables)
    training_log: str | None = "metrics/grpo_log.json"  # <grpo.log_history> (null: no curves)
    out: str = "reports/eval/index.html"


class BenchmarkSection(Section):
    """One VideoQA benchmark in its standard annotation format (see ebmrl.eval.videoqa)."""

    name: SystemName
    format: Literal["activitynet_qa", "nextqa", "pororoqa"]
    annotations: str = Field(min_length=1)  # *_q.json | csv | PororoQA json
    answers: str | None = None  # activitynet_qa: *_a.json
    videos: str = Field(min_length=1)
    video_map: str | None = None  # JSON: video key -> path under videos
    # A random subset of this many questions, seeded by videoqa.subset_seed (null: all).
    max_questions: PositiveInt | None = None

    @model_validator(mode="after")
    def _answers_file(self) -> BenchmarkSection:
        if (self.format == "activitynet_qa") != (self.answers is not None):
            raise ValueError(
                "answers (the *_a.json file) is required for activitynet_qa and only for it"
            )
        return self


def _demo_benchmark(name: str, annotations: str, **paths: str) -> BenchmarkSection:
    return BenchmarkSection(
        name=name, format=name, annotations=f"tests/fixtures/videoqa/{name}/{annotations}",
        videos="data/demo/videos",
        **{key: f"tests/fixtures/videoqa/{name}/{value}" for key, value in paths.items()},
    )  # fmt: skip


# The demo's benchmarks: tiny fixtures in the standard formats, on demo clips.
DEMO_BENCHMARKS = (
    _demo_benchmark("activitynet_qa", "test_q.json", answers="test_a.json"),
    _demo_benchmark("nextqa", "test.csv", video_map="map_vid_vidorID.json"),
    _demo_benchmark("pororoqa", "pororo_qa.json", video_map="video_map.json"),
)


class VideoQASection(Section):
    """Zero-shot VideoQA of each system (greedy, the <perception><think><answer> prompt).

    ``protocol``: ``ebmrl`` (ours) writes options ``(A)``... and asks for a letter;
    ``authors`` writes ``(0)``...``(4)`` and asks for a digit, and for PororoQA adds a
    character list and the frames of the shots around the supporting shot. Either way
    both accuracies are reported: our lenient parser's (``accuracy``) and the authors'
    exact match of the answer block (``authors.accuracy``). ``max_questions`` draws a
    subset seeded by ``subset_seed`` (the authors: 42).
    """

    systems: list[EvalSystemSection] = Field(default_factory=_default_systems, min_length=1)
    benchmarks: list[BenchmarkSection] = Field(
        default_factory=lambda: [b.model_copy() for b in DEMO_BENCHMARKS]
    )
    protocol: Protocol = "ebmrl"
    subset_seed: int = 42
    frames: Annotated[int, Field(ge=1, le=256)] = 8  # paper: 32
    max_pixels_per_frame: Annotated[int, Field(ge=28 * 28)] = 100_352
    max_new_tokens: PositiveInt = 64
    # Requests to each system (an endpoint, or its local model): retries, concurrency.
    system_requests: RequestsSection = RequestsSection()
    out: str = "data/videoqa"  # per-question predictions
    cache: str = "data/videoqa_cache"
    metrics: str = "metrics/videoqa"  # <benchmark>.json each
    torch_threads: Annotated[int, Field(ge=1, le=1024)] | None = 1

    _unique = field_validator("systems")(_unique_names)

    @field_validator("systems")
    @classmethod
    def _videoqa_prompt(cls, systems: list[EvalSystemSection]) -> list[EvalSystemSection]:
        for system in systems:
            if system.prompt != "ebm" or not system.frames:
                raise ValueError(
                    f"system {system.name!r}: VideoQA asks with the three-block prompt and the "
                    "clip; prompt and frames are role-play baseline settings (evaluate.systems)"
                )
        return systems

    @field_validator("benchmarks")
    @classmethod
    def _unique_benchmarks(cls, benchmarks: list[BenchmarkSection]) -> list[BenchmarkSection]:
        names = [b.name for b in benchmarks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"benchmark names must be unique, repeated: {repeated}")
        return benchmarks


# ------------------------------------------------------------------------- tracking
class TrackingSection(Section):
    # MLFLOW_TRACKING_URI in the environment wins over this default.
    mlflow_uri: str = "sqlite:///mlflow.db"
    experiment: str = Field("ebmrl", min_length=1)


class CheckpointsSection(Section):
    """Where sft and grpo copy each checkpoint as they save it, so that a stage rerun on
    another machine (a replacement GPU worker) resumes from it. Read by both training
    stages but listed as a param of neither: where checkpoints go must not retrain."""

    # Any fsspec URL (s3://bucket/prefix; AWS_* and AWS_ENDPOINT_URL from the environment);
    # null: checkpoints stay on the local disk only. EBMRL_CHECKPOINTS_URI wins (the
    # pipeline sets it to <DVC remote>/checkpoints).
    uri: str | None = None


TagName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", max_length=40)]


class Params(Section):
    """Every section of params.yaml. Missing sections take their defaults."""

    # The tag of each output block, in order (perception, think, answer): read by the
    # prompts, SFT targets, rewards, tag parsing and the evaluation. The authors' release
    # and checkpoints use [vision, think, answer].
    tags: tuple[TagName, TagName, TagName] = ("perception", "think", "answer")
    models: ModelsSection = ModelsSection()
    tiny_models: TinyModelsSection = TinyModelsSection()
    demo: DemoSection = DemoSection()
    video: VideoSection = VideoSection()
    ingest: IngestSection = IngestSection()
    frames: FramesSection = FramesSection()
    annotate: AnnotateSection = AnnotateSection()
    synthesize: SynthesizeSection = SynthesizeSection()
    rewards: RewardsSection = RewardsSection()
    sft: SftSection = SftSection()
    grpo: GrpoSection = GrpoSection()
    evaluate: EvaluateSection = EvaluateSection()
    videoqa: VideoQASection = VideoQASection()
    report: ReportSection = ReportSection()
    tracking: TrackingSection = TrackingSection()
    checkpoints: CheckpointsSection = CheckpointsSection()

    @field_validator("tags")
    @classmethod
    def _distinct_tags(cls, tags: tuple[str, str, str]) -> tuple[str, str, str]:
        if len(set(tags)) != len(tags):
            raise ValueError(f"the three tags must differ, got {list(tags)}")
        return tags

    def tag_names(self) -> TagNames:
        return TagNames(*self.tags)


# --------------------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key written twice in one mapping (YAML keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _key_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` (the parent of an unknown key), for suggestions."""
    current: Any = model
    for item in loc:
        if isinstance(item, int):
            continue
        field = getattr(current, "model_fields", {}).get(item)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ()) or ()
        candidates = [annotation, *args]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _problems(error: ValidationError, root: type[BaseModel]) -> list[tuple[str, str]]:
    problems = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        # Pydantic appends the union member or validator name for some errors.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        path = _key_path(loc)
        if err["type"] == "extra_forbidden":
            known = _known_keys(root, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            message = "unknown key"
            if hint:
                message += f" (did you mean {'.'.join(map(str, loc[:-1] + (hint[0],)))}?)"
            elif known:
                message += f" (known keys here: {', '.join(known)})"
        else:
            cause = (err.get("ctx") or {}).get("error")
            message = err["msg"].removeprefix("Value error, ")
            if isinstance(cause, KeyProblem):
                path = f"{path}.{cause.key}"
                value = err.get("input")
                if isinstance(value, dict) and cause.key in value:
                    message += f" (got {value[cause.key]!r})"
            elif "input" in err and err["type"] != "missing":
                message += f" (got {err['input']!r})"
        problems.append((path, message))
    return problems


def validate(data: Any, source: str = "params") -> Params:
    """Validate an already-parsed mapping (e.g. from a test or ``dvc exp run -S``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("<root>", f"must be a mapping, got {type(data).__name__}")])
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, Params)) from None


def load(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate params.yaml; raise ``ConfigError`` naming every bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [("<file>", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [("<file>", f"cannot read: {exc}")]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [(where, f"invalid YAML: {problem}")]) from None
    return validate(data, source=str(path))
