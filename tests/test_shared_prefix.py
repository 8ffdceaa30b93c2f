"""Shared prompt + video prefixes: the suffix pass on a cached prefix gives the numbers of
running each row whole (fp32, real Qwen-VL models, M-RoPE positions included)."""

from __future__ import annotations

import pytest
import torch

from ebmrl.models import load_vlm
from ebmrl.models.shared_prefix import (
    PrefixBatch,
    VisionCalls,
    forward_shared_prefix,
    group_rows,
    pack_groups,
    unsupported_reason,
)

# Special token ids of the hand-built sequences: the tiny Qwen2.5-VL's (Qwen2-VL below is
# built with the same); text tokens are drawn above them.
VIDEO, IMAGE, START, END, PAD = 7, 6, 3, 4, 0


def qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        text_config={
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2]},
        },
        vision_config={
            "depth": 1,
            "embed_dim": 16,
            "hidden_size": 32,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        video_token_id=VIDEO,
        image_token_id=IMAGE,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def qwen2_5(tiny_models):
    model, _ = load_vlm(tiny_models["vlm"])
    return model.eval()


def clip_inputs(model, grid, seed):
    """A random clip's video inputs for ``grid`` (t, h, w patches) and its token count."""
    vision = model.config.vision_config
    dim = 3 * vision.temporal_patch_size * vision.patch_size**2
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    pixels = torch.randn(t * h * w, dim, generator=g)
    return pixels, torch.tensor([grid]), t * h * w // vision.spatial_merge_size**2


def sequences(model, seed=0):
    """Two prompts over two clips; three continuations each of different lengths."""
    g = torch.Generator().manual_seed(seed)
    vocab = 60  # text ids in [9, 60): no special token
    prompts, clips = [], []
    for k, grid in enumerate([(2, 4, 4), (4, 2, 6)]):
        pixels, thw, tokens = clip_inputs(model, grid, seed + k)
        head = torch.randint(9, vocab, (3 + 4 * k,), generator=g).tolist()
        tail = torch.randint(9, vocab, (5 - 2 * k,), generator=g).tolist()
        prompts.append(head + [START] + [VIDEO] * tokens + [END] + tail)
        clips.append((pixels, thw))
    rows = []
    for p in range(2):
        for length in (4, 7, 2):
            rows.append((p, torch.randint(9, vocab, (length + p,), generator=g).tolist()))
    return prompts, clips, rows


def whole_row_logits(model, prompts, clips, rows):
    """Each row alone through the model: the reference numbers."""
    out = []
    for p, suffix in rows:
        ids = torch.tensor([prompts[p] + suffix])
        pixels, thw = clips[p]
        kwargs = (
            {"second_per_grid_ts": torch.tensor([1.0])}
            if hasattr(model.config.vision_config, "tokens_per_second")
            else {}
        )
        types = (ids == VIDEO).long() * 2
        with torch.no_grad():
            logits = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                mm_token_type_ids=types,
                pixel_values_videos=pixels,
                video_grid_thw=thw,
                **kwargs,
            ).logits
        out.append(logits[0, len(prompts[p]) :])
    return out


def shared_logits(model, prompts, clips, rows, suffix_padding):
    width = max(len(p) for p in prompts)
    prefix_ids = torch.full((2, width), PAD)
    prefix_mask = torch.zeros((2, width), dtype=torch.long)
    for k, p in enumerate(prompts):
        prefix_ids[k, width - len(p) :] = torch.tensor(p)
        prefix_mask[k, width - len(p) :] = 1
    tail = max(len(s) for _, s in rows)
    suffix_ids = torch.full((len(rows), tail), PAD)
    suffix_mask = torch.zeros((len(rows), tail), dtype=torch.long)
    for r, (_, s) in enumerate(rows):
        at = slice(0, len(s)) if suffix_padding == "right" else slice(tail - len(s), tail)
        suffix_ids[r, at] = torch.tensor(s)
        suffix_mask[r, at] = 1
    video = {
        "pixel_values_videos": torch.cat([c[0] for c in clips]),
        "video_grid_thw": torch.cat([c[1] for c in clips]),
    }
    if hasattr(model.config.vision_config, "tokens_per_second"):
        video["second_per_grid_ts"] = torch.tensor([1.0, 1.0])
    with torch.no_grad():
        logits = forward_shared_prefix(
            model,
            PrefixBatch(prefix_ids, prefix_mask, video),
            suffix_ids,
            suffix_mask,
            torch.tensor([p for p, _ in rows]),
        ).logits
    out = []
    for r, (_, s) in enumerate(rows):
        start = 0 if suffix_padding == "right" else tail - len(s)
        out.append(logits[r, start : start + len(s)])
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("suffix_padding", ["right", "left"])
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2_vl"])
def test_suffixes_on_a_shared_prefix_equal_whole_rows(qwen2_5, arch, attention, suffix_padding):
    model = qwen2_5 if arch == "qwen2_5_vl" else qwen2_vl()
    model.config._attn_implementation = attention
    try:
        assert unsupported_reason(model) is None
        prompts, clips, rows = sequences(model)
        expected = whole_row_logits(model, prompts, clips, rows)
        with VisionCalls(model) as calls:
            got = shared_logits(model, prompts, clips, rows, suffix_padding)
        # One vision-tower call for the batch, each clip encoded once (not once per row).
        assert (calls.calls, calls.items) == (1, 2)
        for a, b in zip(got, expected, strict=True):
            assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
        # The video changes the suffix's numbers: the prefix really is conditioned on it.
        swapped = [(c[0].flip(0), c[1]) for c in clips]
        other = shared_logits(model, prompts, swapped, rows, suffix_padding)
        assert not torch.allclose(other[0], got[0], atol=1e-4)
    finally:
        model.config._attn_implementation = "sdpa"


def test_a_suffix_with_video_tokens_is_refused(qwen2_5):
    prompts, clips, rows = sequences(qwen2_5)
    rows[0] = (0, [VIDEO, 12])
    with pytest.raises(ValueError, match="suffix holds image or video tokens"):
        shared_logits(qwen2_5, prompts, clips, rows, "right")


def test_models_that_cannot_share_say_why(qwen2_5):
    text = qwen2_5.config.get_text_config()
    text.use_sliding_window = True
    try:
        assert unsupported_reason(qwen2_5) == "sliding-window attention layers"
    finally:
        text.use_sliding_window = False
    qwen2_5.config._attn_implementation = "flash_attention_2"
    try:
        assert "attention 'flash_attention_2'" in unsupported_reason(qwen2_5)
    finally:
        qwen2_5.config._attn_implementation = "sdpa"
    from transformers import BertConfig, BertModel

    assert "model type 'bert'" in unsupported_reason(BertModel(BertConfig(num_hidden_layers=1)))


def test_group_rows_and_pack_groups():
    assert group_rows(["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4], [3]]
    groups = [[0, 1, 2], [3, 4], [5, 6, 7, 8, 9, 10, 11], [12]]
    assert pack_groups(groups, 5) == [
        [[0, 1, 2], [3, 4]],
        [[5, 6, 7, 8, 9]],
        [[10, 11], [12]],
    ]
    assert pack_groups([], 4) == []
    assert pack_groups([[0], [1], [2]], 1) == [[[0]], [[1]], [[2]]]
