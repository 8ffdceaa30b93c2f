"""GRPO on video: a small subclass of TRL's ``GRPOTrainer``.

Stock TRL 1.16 handles images, not video: a ``{"type": "video"}`` block reaches
``generate()`` but every log-prob pass (old policy, reference, policy under training)
runs without the video features, so the vision tower gets no gradient and no error is
raised. This subclass:

1. tokenizes prompts with the clip's frames (looked up in the frame store by the row's
   ``clip_id``) into real video features (``pixel_values_videos``, ``video_grid_thw``,
   ``second_per_grid_ts``, ``mm_token_type_ids`` for M-RoPE);
2. carries those features, one entry per row, through TRL's buffering, shuffling and
   splitting into every log-prob pass;
3. suppresses the image/video pad tokens during sampling (a sampled pad token breaks the
   next forward pass);
4. with ``use_vllm``, hands each row's clip to the colocated vLLM engine
   (``ebmrl.train.vllm_video``), which TRL would otherwise prompt without the video.

It also makes the loss the paper's:

5. the advantages are ``ebmrl.rewards.aggregate.combine`` of the rewards TRL computed
   (``aggregation``, ``advantage_eps``; the weights of ``GRPOConfig.reward_weights``):
   per-reward group z-scores summed with the weights, no batch re-standardisation. TRL's
   own multi-reward aggregation runs but its result is replaced, in the loss and in the
   logged ``advantages``;
6. ``kl_clamp`` clamps the log-ratio of the k3 KL estimator to ``[-kl_clamp, kl_clamp]``
   (the authors: 10), value and gradient, before TRL forms ``exp(d) - d - 1``.

And it runs each prompt + clip once per group, not once per completion:

7. with ``shared_prefix`` (on by default), every log-prob pass (the reference pass, the
   old-policy pass when TRL computes one, and the policy pass under training) runs each
   prompt's prompt + video once (one vision-tower call per prompt) and only each
   completion on top of its cached prefix (``ebmrl.models.shared_prefix``); the
   log-probs, and in the policy pass the loss's gradients, equal the row-by-row ones
   (tested). In the policy pass the gradient reaches the prefix (the vision tower
   included) through its cached keys and values. A model that cannot share a prefix
   (``unsupported_reason``) keeps the row-by-row path, with one warning; so does the
   policy pass where the model is wrapped for several processes (DDP, FSDP, DeepSpeed:
   two forward calls before one backward) or uses gradient checkpointing (which keeps
   no cache).

It logs where a step's time goes, every optimiser step, next to TRL's ``step_time``:
``timing/generation``, ``timing/rewards`` and ``timing/rewards/<name>``,
``timing/reference_pass``, ``timing/old_policy_pass`` (when computed) and
``timing/policy_forward_backward``, in seconds (MLflow; kept out of the DVC outputs by
``ebmrl.train.grpo.without_timings``).

It overrides private TRL methods (``_tokenize_prompts``, ``_generate_and_score_completions``,
``_calculate_rewards``, ``_generate_single_turn``, ``_get_per_token_logps_and_entropies``,
``_compute_loss``, ``_prepare_inputs``): TRL is pinned exactly,
``ebmrl.train.trl_contract`` checks their signatures when the trainer is built, and
``tests/test_video_grpo.py`` asserts the
contract (the vision tower receives a non-zero gradient; the advantages in the loss are
``combine``'s; the clamp), so an upgrade that breaks it fails loudly.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import gather_object
from torch import nn
from trl import GRPOTrainer
from trl.trainer.utils import is_async_callable

from ebmrl.frame_store import FrameStore
from ebmrl.models.shared_prefix import (
    PrefixBatch,
    forward_shared_prefix,
    group_rows,
    pack_groups,
    unsupported_reason,
)
from ebmrl.models.vlm import encode, strip_none_keys, vision_pad_token_ids
from ebmrl.rewards.aggregate import PAPER_EPS, Aggregation, combine
from ebmrl.train.resume import ResumeWithConvertedKeys
from ebmrl.train.trl_contract import check_overrides
from ebmrl.train.vllm_video import prepare_colocated_engine, video_item

# Keys under which per-row video features travel in TRL's batch dicts. Lists and
# tensors with a leading row dimension survive TRL's shuffle/split unchanged.
VIDEO_PIXELS = "ebmrl_video_pixels"  # list[Tensor(rows_i, patch_dim)]
VIDEO_GRID = "ebmrl_video_grid_thw"  # Tensor(B, 3)
VIDEO_SECONDS = "ebmrl_second_per_grid_ts"  # Tensor(B,)
VIDEO_KEYS = (VIDEO_PIXELS, VIDEO_GRID, VIDEO_SECONDS)

# mm_token_type_ids values used by Qwen-VL processors.
IMAGE_TYPE, VIDEO_TYPE = 1, 2

log = logging.getLogger(__name__)


@dataclass
class VideoRows:
    """Video features of a batch, one clip per row, in row order."""

    pixels: list[torch.Tensor]
    grid_thw: torch.Tensor
    second_per_grid_ts: torch.Tensor | None

    def rows(self, start: int, end: int, device: torch.device) -> dict[str, torch.Tensor]:
        inputs = {
            "pixel_values_videos": torch.cat(self.pixels[start:end]).to(device),
            "video_grid_thw": self.grid_thw[start:end].to(device),
        }
        if self.second_per_grid_ts is not None:
            inputs["second_per_grid_ts"] = self.second_per_grid_ts[start:end].to(device)
        return inputs

    def select(self, rows: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        """The video inputs of ``rows`` (any rows, in that order)."""
        inputs = {
            "pixel_values_videos": torch.cat([self.pixels[r] for r in rows]).to(device),
            "video_grid_thw": self.grid_thw[rows].to(device),
        }
        if self.second_per_grid_ts is not None:
            inputs["second_per_grid_ts"] = self.second_per_grid_ts[rows].to(device)
        return inputs

    def same_clip(self, a: int, b: int) -> bool:
        if not torch.equal(self.grid_thw[a], self.grid_thw[b]):
            return False
        seconds = self.second_per_grid_ts
        if seconds is not None and not torch.equal(seconds[a], seconds[b]):
            return False
        return torch.equal(self.pixels[a], self.pixels[b])

    def as_batch_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {VIDEO_PIXELS: self.pixels, VIDEO_GRID: self.grid_thw}
        if self.second_per_grid_ts is not None:
            fields[VIDEO_SECONDS] = self.second_per_grid_ts
        return fields

    @classmethod
    def from_batch_fields(cls, batch: dict[str, Any]) -> VideoRows | None:
        if VIDEO_PIXELS not in batch:
            return None
        return cls(list(batch[VIDEO_PIXELS]), batch[VIDEO_GRID], batch.get(VIDEO_SECONDS))


def mm_token_type_ids(
    input_ids: torch.Tensor, image_token_id: int | None, video_token_id: int
) -> torch.Tensor:
    types = torch.zeros_like(input_ids)
    if image_token_id is not None:
        types[input_ids == image_token_id] = IMAGE_TYPE
    types[input_ids == video_token_id] = VIDEO_TYPE
    return types


def video_fps(processor: Any, second_per_grid_ts: torch.Tensor | None, rows: int) -> list[float]:
    """The frame rate our processor assumed for each row (vLLM must assume the same).

    Processors without ``second_per_grid_ts`` (Qwen2-VL) put no time in the positions, so
    any rate agrees; vLLM's own default (2 fps) is used.
    """
    if second_per_grid_ts is None:
        return [2.0] * rows
    patch = processor.video_processor.temporal_patch_size
    return [patch / float(s) for s in second_per_grid_ts.tolist()]


class StepTimings:
    """Seconds per phase, added up over one optimiser step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def timed(self, func: Any, name: str) -> Any:
        """``func`` (a reward function) with its calls measured under ``name``."""

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.measure(name):
                return func(*args, **kwargs)

        call.__name__ = call.__qualname__ = getattr(func, "__name__", name)
        call.__doc__ = func.__doc__
        return call

    def flush(self) -> dict[str, float]:
        out = dict(self.seconds)
        self.seconds.clear()
        return out


class VideoGRPOTrainer(ResumeWithConvertedKeys, GRPOTrainer):
    """``GRPOTrainer`` whose prompts carry a video clip, looked up by ``clip_id``.

    Dataset rows need ``prompt`` (a conversation whose user turn has a ``{"type": "video"}``
    block) and ``clip_id``; every other column is passed to the reward functions.
    ``aggregation``/``advantage_eps`` define the advantages (``combine``); ``kl_clamp``
    (None: off) bounds the KL log-ratio; ``shared_prefix`` runs each prompt's prompt +
    video once in the no-gradient passes.
    """

    def __init__(
        self,
        *args: Any,
        frame_store: FrameStore,
        aggregation: Aggregation = "normalize_then_sum",
        advantage_eps: float = PAPER_EPS,
        kl_clamp: float | None = None,
        shared_prefix: bool = True,
        **kwargs: Any,
    ):
        check_overrides(type(self), GRPOTrainer)  # before any work: an upgrade fails here
        if kl_clamp is not None and not kl_clamp > 0:
            raise ValueError(f"kl_clamp must be > 0 (or None), got {kl_clamp}")
        self.frame_store = frame_store
        self.aggregation = aggregation
        self.advantage_eps = advantage_eps
        self.kl_clamp = kl_clamp
        self.shared_prefix = shared_prefix
        self._unshared_reasons: set[str] = set()
        self.timings = StepTimings()
        self._prepare_seconds = 0.0
        self._no_grad_passes: list[str] = []
        self._pending_videos: list[Any] | None = None
        self._video_rows: VideoRows | None = None
        self._video_fps: list[float] | None = None
        self._rewards_per_func: torch.Tensor | None = None
        self._clamp_reference_in: dict[str, Any] | None = None
        super().__init__(*args, **kwargs)
        config = self.model.config
        self._video_token_id = config.video_token_id
        self._image_token_id = getattr(config, "image_token_id", None)
        pad_ids = vision_pad_token_ids(self.processing_class)
        if self.use_vllm:
            prepare_colocated_engine(self.vllm_generation, pad_ids)
        else:
            suppressed = set(self.generation_kwargs.get("suppress_tokens") or []) | set(pad_ids)
            self.generation_kwargs["suppress_tokens"] = sorted(suppressed)
            self.generation_config.suppress_tokens = sorted(suppressed)
        self.reward_funcs = [
            f
            if isinstance(f, nn.Module) or is_async_callable(f)
            else self.timings.timed(f, f"rewards/{name}")
            for f, name in zip(self.reward_funcs, self.reward_func_names, strict=True)
        ]

    # ------------------------------------------------------------------ timings
    def training_step(self, model, inputs, num_items_in_batch):
        # The step less _prepare_inputs (generation, rewards, no-gradient passes).
        started = time.perf_counter()
        self._prepare_seconds = 0.0
        output = super().training_step(model, inputs, num_items_in_batch)
        elapsed = time.perf_counter() - started - self._prepare_seconds
        self.timings.seconds["policy_forward_backward"] += elapsed
        if self._step % self.current_gradient_accumulation_steps == 0:  # as TRL's step_time
            for name, seconds in self.timings.flush().items():
                self._metrics["train"][f"timing/{name}"].append(seconds)
        return output

    def _prepare_inputs(self, generation_batch):
        started = time.perf_counter()
        try:
            return super()._prepare_inputs(generation_batch)
        finally:
            self._prepare_seconds += time.perf_counter() - started

    def _expected_no_grad_passes(self) -> list[str]:
        """The no-gradient log-prob passes TRL runs on a generated batch, in its order."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        old = self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )
        return (["old_policy_pass"] if old else []) + (
            ["reference_pass"] if self.beta != 0.0 else []
        )

    # ------------------------------------------------------------------ generation
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        inputs = [strip_none_keys(dict(row)) for row in inputs]
        missing = [i for i, row in enumerate(inputs) if not row.get("clip_id")]
        if missing:
            raise ValueError(f"rows {missing} have no clip_id: every GRPO prompt needs a clip")
        self._pending_videos = [self.frame_store.frames(row["clip_id"]) for row in inputs]
        self._no_grad_passes = self._expected_no_grad_passes() if self.model.training else []
        try:
            output = super()._generate_and_score_completions(inputs)
            if self._video_rows is None:
                raise RuntimeError(
                    "prompts were tokenized without their video (TRL internals changed?)"
                )
            output["advantages"] = self._our_advantages(len(inputs), output["advantages"])
            output.update(self._video_rows.as_batch_fields())
            # Lets the completions table name the prompt each completion answers.
            ids = gather_object([str(row.get("prompt_id", "")) for row in inputs])
            self._logs["extra"]["prompt_id"].extend(ids)
        finally:
            self._pending_videos = None
            self._video_rows = None
            self._video_fps = None
            self._rewards_per_func = None
            self._no_grad_passes = []
        return output

    # ------------------------------------------------------------------ advantages
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        with self.timings.measure("rewards"):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards  # every process's rows (TRL gathers them)
        return rewards

    def _our_advantages(self, local_rows: int, trl_advantages: torch.Tensor) -> torch.Tensor:
        """``combine`` of the gathered rewards, this process's slice; TRL's log updated."""
        rewards = self._rewards_per_func
        if rewards is None:
            raise RuntimeError(
                "rewards were not computed through _calculate_rewards (TRL changed?)"
            )
        names = list(self.reward_func_names)
        keys = names if len(set(names)) == len(names) else [f"{n}#{i}" for i, n in enumerate(names)]
        table = rewards.detach().cpu().double().numpy()
        columns = {key: table[:, k].tolist() for k, key in enumerate(keys)}
        weights = dict(zip(keys, self.reward_weights.tolist(), strict=True))
        group = self.num_generations if self.model.training else self.num_generations_eval
        values = combine(columns, weights, group, self.aggregation, eps=self.advantage_eps)
        logged = self._logs["advantages"]
        for offset, value in enumerate(values):  # TRL appended its own for these rows
            logged[len(logged) - len(values) + offset] = value
        start = self.accelerator.process_index * local_rows
        ours = torch.tensor(values[start : start + local_rows], dtype=trl_advantages.dtype)
        return ours.to(trl_advantages.device)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, **kw):
        with self.timings.measure("generation"):
            return self._generate_rollouts(
                prompt_ids, images, multimodal_fields, num_generations, **kw
            )

    def _generate_rollouts(self, prompt_ids, images, multimodal_fields, num_generations, **kw):
        if not self.use_vllm:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, **kw
            )
        if self._pending_videos is None or self._video_fps is None:
            raise RuntimeError("vLLM rollout without the batch's clips (TRL internals changed?)")
        llm = self.vllm_generation.llm
        llm.videos = [
            video_item(frames, fps)
            for frames, fps in zip(self._pending_videos, self._video_fps, strict=True)
        ]
        try:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, **kw
            )
        finally:
            llm.videos = None

    def _tokenize_prompts(self, prompts: list):
        if self._pending_videos is None:
            return super()._tokenize_prompts(prompts)
        processor = self.processing_class
        encoded = encode(
            processor, [strip_none_keys(p) for p in prompts], list(self._pending_videos)
        )
        mask = encoded["attention_mask"].bool()
        prompt_ids = [ids[m].tolist() for ids, m in zip(encoded["input_ids"], mask, strict=True)]
        grid = encoded["video_grid_thw"]
        pixels = list(torch.split(encoded["pixel_values_videos"], grid.prod(dim=-1).tolist()))
        self._video_rows = VideoRows(pixels, grid, encoded.get("second_per_grid_ts"))
        self._video_fps = video_fps(processor, encoded.get("second_per_grid_ts"), len(prompts))
        fields: dict[str, Any] = {
            "pixel_values_videos": encoded["pixel_values_videos"],
            "video_grid_thw": grid,
            # Unpadded per-prompt lists: TRL left-pads them exactly like the prompt ids.
            "mm_token_type_ids": [
                types[m].tolist()
                for types, m in zip(encoded["mm_token_type_ids"], mask, strict=True)
            ],
        }
        if "second_per_grid_ts" in encoded:
            fields["second_per_grid_ts"] = encoded["second_per_grid_ts"]
        return prompt_ids, None, fields

    # -------------------------------------------------------------------- log-probs
    def _compute_loss(self, model, inputs):
        self._video_rows = VideoRows.from_batch_fields(inputs)
        if self.kl_clamp is not None and self.beta != 0.0:
            # TRL reads ref_per_token_logps after the policy pass; _clamp_reference
            # rewrites it in this copy so that TRL's log-ratio is the clamped one.
            inputs = dict(inputs)
            self._clamp_reference_in = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._video_rows = None
            self._clamp_reference_in = None

    def _clamp_reference(self, per_token_logps: torch.Tensor) -> None:
        """Make TRL's ``ref - logp`` equal ``clamp(ref - logp, -c, c)`` (value and gradient).

        TRL computes ``d = ref - logp`` and ``exp(d) - d - 1``. With ``ref' = logp +
        clamp(ref - logp)``, ``ref' - logp`` is the clamped log-ratio, and its gradient
        with respect to ``logp`` is -1 inside the bounds and 0 where clamped, exactly the
        authors' ``torch.clamp(ref - logp, -10, 10)``.
        """
        inputs = self._clamp_reference_in
        if inputs is None:
            return
        self._clamp_reference_in = None  # the policy pass of this loss only
        ref = inputs["ref_per_token_logps"]
        c = self.kl_clamp
        inputs["ref_per_token_logps"] = per_token_logps + (ref - per_token_logps).clamp(-c, c)

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **image_kwargs,
    ):
        phase = None
        if not torch.is_grad_enabled() and self._no_grad_passes:
            phase = self._no_grad_passes.pop(0)  # TRL's order: old policy, then reference
        with self.timings.measure(phase) if phase else nullcontext():
            logps, entropies, aux_loss = self._logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **image_kwargs,
            )
        self._clamp_reference(logps)
        return logps, entropies, aux_loss

    def _logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **image_kwargs,
    ):
        video = self._video_rows
        if video is None:
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **image_kwargs,
            )
        if len(video.pixels) != input_ids.size(0):
            raise RuntimeError(
                f"{input_ids.size(0)} rows but video features for {len(video.pixels)}: "
                "TRL's batching changed, the video subclass must be updated"
            )
        batch_size = batch_size or input_ids.size(0)
        if self._may_share_prefix(model, compute_aux_loss):
            shared = self._shared_prefix_logps(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy
            )
            if shared is not None:
                return shared
        all_logps, all_entropies, all_aux = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids = input_ids[start:end]
            mask = attention_mask[start:end]
            model_inputs = {
                "input_ids": ids,
                "attention_mask": mask,
                "mm_token_type_ids": mm_token_type_ids(
                    ids, self._image_token_id, self._video_token_id
                ),
                **video.rows(start, end, ids.device),
            }
            if compute_aux_loss:
                model_inputs["output_router_logits"] = True
            # Score only completion tokens, as TRL does.
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with self.accelerator.autocast():
                outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
            all_logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                all_entropies.append(outputs.entropy[:, -logits_to_keep:])
            if compute_aux_loss:
                all_aux.append(outputs.aux_loss)
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        aux_loss = torch.stack(all_aux).mean() if compute_aux_loss else None
        return logps, entropies, aux_loss

    # ------------------------------------------------------------ shared prefixes
    def _may_share_prefix(self, model, compute_aux_loss: bool) -> bool:
        if not self.shared_prefix or compute_aux_loss:
            return False
        reason = unsupported_reason(self.accelerator.unwrap_model(model))
        if reason is None and torch.is_grad_enabled():
            reason = self._no_shared_prefix_with_gradient(model)
        if reason is not None and reason not in self._unshared_reasons:
            self._unshared_reasons.add(reason)
            log.warning("shared prefixes off for this model (%s): scoring row by row", reason)
        return reason is None

    def _no_shared_prefix_with_gradient(self, model) -> str | None:
        """Why the policy pass under training cannot share prefixes here (None: it can)."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type != DistributedType.NO:
            # DDP/FSDP/DeepSpeed wrappers expect one forward call per backward.
            return f"policy pass under {self.accelerator.distributed_type.value}"
        if getattr(self.accelerator.unwrap_model(model), "is_activation_checkpointing", False):
            return "policy pass with gradient checkpointing"
        return None

    def _prompt_groups(self, input_ids, attention_mask, prompt_width: int) -> list[list[int]]:
        """Rows with the same prompt tokens and the same clip, in row order."""
        video = self._video_rows
        keys = []
        for ids, mask in zip(
            input_ids[:, :prompt_width], attention_mask[:, :prompt_width], strict=True
        ):
            keys.append(tuple(ids[mask.bool()].tolist()))
        groups: list[list[int]] = []
        for same_prompt in group_rows(keys):
            clips: list[list[int]] = []
            for row in same_prompt:
                match = next((c for c in clips if video.same_clip(c[0], row)), None)
                if match is None:
                    clips.append([row])
                else:
                    match.append(row)
            groups.extend(clips)
        return groups

    def _shared_prefix_logps(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy
    ):
        """Completion log-probs (and entropies), each prompt + clip run once per batch;
        None when no two rows share a prompt (nothing to gain)."""
        rows_total, width = input_ids.shape
        prompt_width = width - logits_to_keep
        groups = self._prompt_groups(input_ids, attention_mask, prompt_width)
        if all(len(g) == 1 for g in groups):
            return None
        # The prefix is the prompt but its last token: that token's logit predicts the
        # first completion token, so it opens each row's suffix.
        split = prompt_width - 1
        device = input_ids.device
        logps = entropies = None
        for batch in pack_groups(groups, batch_size):
            heads = [g[0] for g in batch]
            rows = torch.tensor([r for g in batch for r in g], device=device)
            row_groups = torch.tensor([i for i, g in enumerate(batch) for _ in g], device=device)
            prefix = PrefixBatch(
                input_ids[heads, :split],
                attention_mask[heads, :split],
                self._video_rows.select(heads, device),
            )
            ids, mask = input_ids[rows, split:], attention_mask[rows, split:]
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, 0] = -100  # the prompt's last token: not scored
            with self.accelerator.autocast():
                out = forward_shared_prefix(
                    model, prefix, ids, mask, row_groups, labels=labels, fused_lm_head=True
                )
            if logps is None:
                logps = out.log_probs.new_zeros((rows_total, logits_to_keep))
            logps[rows] = out.log_probs
            if compute_entropy:
                if entropies is None:
                    entropies = out.entropy.new_zeros((rows_total, logits_to_keep))
                entropies[rows] = out.entropy
        return logps, entropies, None
