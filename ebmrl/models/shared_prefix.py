"""Score many continuations of one prompt + video without recomputing the prompt.

A GRPO group's G completions share one prompt and one clip, and so do the PCG reward's
G traces and its baseline. Run row by row, every no-gradient pass (reference log-probs,
old-policy log-probs, PCG scoring) puts the same clip through the vision tower and the
same prompt + video tokens through the language model once per row. Here the shared
prefix of each group goes through the model once (one vision-tower call for the videos
of all the groups of a batch, one per video), its key/value cache is kept, and only
each row's own suffix is run, attending to its group's cached prefix.

The rows' numbers are those of running each row whole (tested to 1e-4 in fp32):

- positions: Qwen-VL's 3D rotary positions (M-RoPE, where the video's tokens take
  temporal/height/width positions and the text after them continues from the largest)
  are computed by the model's own ``get_rope_index`` over each row's whole sequence,
  exactly as a whole-row forward computes them, then split into the prefix's and the
  suffix's; the model is given them explicitly (no ``rope_deltas`` state is involved);
- the attention mask of the suffix pass is the whole row's (prefix padding included), so
  a suffix token sees what it would see in the whole row;
- the cache hands each row its group's prefix keys and values (an index into the
  groups' cache, not a copy kept per row) and keeps nothing of the suffix.

``unsupported_reason`` says why a model cannot share a prefix (architectures whose
positions and cache this was written and tested for: Qwen2-VL and Qwen2.5-VL with the
``sdpa`` or ``eager`` attention and no sliding window); callers then keep the
row-by-row path.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
SUPPORTED_ATTENTION = ("sdpa", "eager")

# mm_token_type_ids values of Qwen-VL processors.
IMAGE_TYPE, VIDEO_TYPE = 1, 2


def base_model(model: Any) -> Any:
    """The ``...ForConditionalGeneration`` under a PEFT or DDP wrapper."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and not hasattr(model, "config"):
            model = model.module
    return model


def unsupported_reason(model: Any) -> str | None:
    """None when ``model`` can share a prefix here; otherwise why not (for the log)."""
    model = base_model(model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} (shared prefixes: {', '.join(SUPPORTED_MODEL_TYPES)})"
    text = config.get_text_config()
    attention = getattr(text, "_attn_implementation", None) or config._attn_implementation
    if attention not in SUPPORTED_ATTENTION:
        return f"attention {attention!r} (shared prefixes: {', '.join(SUPPORTED_ATTENTION)})"
    if getattr(text, "use_sliding_window", False) or any(
        t != "full_attention" for t in (getattr(text, "layer_types", None) or [])
    ):
        return "sliding-window attention layers"
    if not hasattr(getattr(model, "model", None), "get_rope_index"):
        return "no get_rope_index on the model"
    return None


class VisionCalls:
    """Counts the calls of a VLM's real vision tower (a forward hook on the module) and
    the videos and images they encode, while in the ``with`` block."""

    def __init__(self, model: Any):
        self.visual = base_model(model).model.visual
        self.calls = 0
        self.items = 0  # videos + images encoded
        self._handle = None

    def _hook(self, module, args, kwargs, output) -> None:
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self.calls += 1
        self.items += int(grid.shape[0]) if grid is not None else 1

    def __enter__(self) -> VisionCalls:
        self._handle = self.visual.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def group_rows(keys: Sequence[Hashable]) -> list[list[int]]:
    """Rows with equal keys, as lists of row indices, in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def pack_groups(groups: Sequence[Sequence[int]], batch_size: int) -> list[list[list[int]]]:
    """Whole groups packed in order into batches of at most ``batch_size`` rows; a group
    larger than that is cut into pieces of ``batch_size`` rows, each its own batch."""
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    size = 0
    for group in groups:
        pieces = [list(group[i : i + batch_size]) for i in range(0, len(group), batch_size)]
        for piece in pieces:
            if current and size + len(piece) > batch_size:
                batches.append(current)
                current, size = [], 0
            current.append(piece)
            size += len(piece)
    if current:
        batches.append(current)
    return batches


@dataclass
class PrefixBatch:
    """The shared prefixes of a batch's groups, one row per group, left-padded, with the
    video inputs of the groups' clips in group order (``pixel_values_videos``,
    ``video_grid_thw`` (groups, 3), ``second_per_grid_ts`` (groups,) where the model has
    it)."""

    input_ids: torch.Tensor  # (U, K)
    attention_mask: torch.Tensor  # (U, K)
    video: dict[str, torch.Tensor]


class SharedPrefixLayer(DynamicLayer):
    """One layer's cache: the groups' prefix keys/values (computed once), handed to each
    row by index; the suffix's keys/values are appended for the call, not kept."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.rows = keys, values, rows
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        keys = torch.cat([self.keys.index_select(0, self.rows), key_states], dim=-2)
        values = torch.cat([self.values.index_select(0, self.rows), value_states], dim=-2)
        return keys, values


def _shared_cache(prefill: Cache, rows: torch.Tensor) -> Cache:
    layers = []
    for layer in prefill.layers:
        if type(layer) is not DynamicLayer:
            raise TypeError(f"cannot share a {type(layer).__name__} cache layer")
        layers.append(SharedPrefixLayer(layer.keys, layer.values, rows))
    return Cache(layers=layers)


def mm_token_types(input_ids: torch.Tensor, config: Any) -> torch.Tensor:
    """``mm_token_type_ids`` of token ids: 1 image, 2 video, 0 text."""
    types = torch.zeros_like(input_ids)
    image = getattr(config, "image_token_id", None)
    if image is not None:
        types[input_ids == image] = IMAGE_TYPE
    types[input_ids == config.video_token_id] = VIDEO_TYPE
    return types


def forward_shared_prefix(
    model: Any,
    prefix: PrefixBatch,
    suffix_ids: torch.Tensor,
    suffix_mask: torch.Tensor,
    row_groups: torch.Tensor,
    **head_kwargs: Any,
) -> Any:
    """The model's output over the suffixes, each row continuing its group's prefix.

    Row ``r`` is ``prefix.input_ids[row_groups[r]]`` followed by ``suffix_ids[r]`` (masks
    likewise: padding may sit anywhere); the output covers the suffix positions only.
    ``head_kwargs`` go to the suffix pass (``logits_to_keep``, or TRL's ``labels`` and
    ``fused_lm_head``). The prefix pass computes one logit per group, so a suffix must
    start at or before the first position whose prediction is wanted.
    """
    inner = base_model(model)
    config = inner.config
    row_groups = row_groups.to(prefix.input_ids.device)
    if (mm_token_types(suffix_ids, config) != 0).any():
        raise ValueError("a suffix holds image or video tokens: they must be in the prefix")
    ids = torch.cat([prefix.input_ids.index_select(0, row_groups), suffix_ids], dim=1)
    mask = torch.cat([prefix.attention_mask.index_select(0, row_groups), suffix_mask], dim=1)
    video = prefix.video
    grid = video["video_grid_thw"]
    seconds = video.get("second_per_grid_ts")
    rope_kwargs = {}
    if seconds is not None:
        rope_kwargs["second_per_grid_ts"] = seconds.index_select(0, row_groups.to(seconds.device))
    positions, _ = inner.model.get_rope_index(
        ids,
        mm_token_type_ids=mm_token_types(ids, config),
        video_grid_thw=grid.index_select(0, row_groups.to(grid.device)),
        attention_mask=mask,
        **rope_kwargs,
    )
    width = prefix.input_ids.size(1)
    # Every row of a group has its group's prefix positions: take each group's first row.
    first_rows = torch.stack(
        [(row_groups == g).nonzero()[0, 0] for g in range(prefix.input_ids.size(0))]
    )
    cache = DynamicCache()
    model(
        input_ids=prefix.input_ids,
        attention_mask=prefix.attention_mask,
        position_ids=positions[:, first_rows, :width],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
        **video,
    )
    return model(
        input_ids=suffix_ids,
        attention_mask=mask,
        position_ids=positions[:, :, width:],
        cache=_shared_cache(cache, row_groups),
        use_cache=False,
        **head_kwargs,
    )
