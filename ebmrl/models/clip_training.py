"""Teach the tiny CLIP to see the demo's scenes: contrastive training on rendered frames.

A random-weight CLIP makes the CLIP reward noise. The demo's clips are drawn from a known
scene grammar (``ebmrl.demo``), so a tiny CLIP can learn to see them for real:
``train_clip`` renders frames of scenes from that grammar, with seeds of its own (never
the demo's evaluation clips), pairs each with a caption stating some of its attributes in
varied words (``ebmrl.scene_words``), and trains image and text towers with the
symmetric InfoNCE loss. A caption that states only some attributes is true of every frame
that shares them, so the targets are all consistent pairs of the batch, not just the
diagonal (motion is not visible in a single frame: it never decides a pair).

The model is loaded and saved through the same open_clip ``local-dir`` layout that
``ebmrl.models.load_clip`` reads, so the frames stage and the CLIP reward use it exactly
as they use ``ViT-L-14``/``openai``. ``evaluate_clip`` measures what it learned on scenes
it never saw: text-to-frame retrieval top-1 (against the chance level) and, per
attribute, zero-shot accuracy (against one over the number of values).

Deterministic: the same seed and settings give the same weights (data from seeded numpy
generators, a fixed number of torch threads, no dropout).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebmrl.config import TinyClipSection
from ebmrl import scene_words
from ebmrl.io import atomic_path
from ebmrl.models.scene_clips import (
    DEMO_GEOMETRY,
    EVAL_STREAM,
    TRAIN_STREAM,
    SceneGeometry,
    render_clips,
    scene_seeds,
    torch_threads,
)

# What a single frame shows; motion needs several frames and never decides a pair.
VISIBLE = ("background", "lighting", "figures", "figure_colour", "danger")


@dataclass
class RenderedScenes:
    attributes: list[dict[str, Any]]  # per scene
    images: Any  # (N, 3, H, W) preprocessed frames, torch
    scene_of: np.ndarray  # (N,) index into ``attributes`` per image


def render_scenes(
    count: int, seed: int, stream: int, geometry: SceneGeometry, preprocess: Any, frames: int
) -> RenderedScenes:
    """``count`` scenes of the grammar, ``frames`` preprocessed frames of each."""
    import torch
    from PIL import Image

    rendered = render_clips(count, seed, stream, geometry)
    pick = np.random.default_rng(scene_seeds(seed, stream, 1)[0])
    images, scene_of = [], []
    for index, clip in enumerate(rendered.clips):
        if frames == 1:
            chosen = [len(clip) // 2]
        else:
            chosen = sorted(pick.choice(len(clip), size=min(frames, len(clip)), replace=False))
        for t in chosen:
            images.append(preprocess(Image.fromarray(clip[t])))
            scene_of.append(index)
    return RenderedScenes(rendered.attributes, torch.stack(images), np.asarray(scene_of))


def consistent(mentions: Sequence[set[str]], caption_attrs, image_attrs) -> np.ndarray:
    """``(images, captions)`` 0/1: the caption is true of the image (visible attributes)."""
    out = np.ones((len(image_attrs), len(caption_attrs)), dtype=np.float32)
    for j, (said, truth) in enumerate(zip(mentions, caption_attrs, strict=True)):
        for name in VISIBLE:
            if name in said:
                out[:, j] *= np.array([img[name] == truth[name] for img in image_attrs])
    return out


def _soft_cross_entropy(logits, targets):
    import torch

    targets = targets / targets.sum(dim=1, keepdim=True)
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def encode_text_prefix(model: Any, tokens: Any) -> Any:
    """``model.encode_text(tokens)``, computed on the tokens up to the longest text only.

    CLIP's text tower is causal and pools at the end-of-text token, so the padding after
    it never reaches the result: cutting the padded 77 slots to the longest caption
    (about 30 here) gives the same embeddings for a third of the work. A test holds it
    equal to ``encode_text``.
    """
    from open_clip.transformer import text_global_pool

    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), tokens, model.text_pool_type)
    return x @ model.text_projection


def _encode(model, images, tokens):
    import torch.nn.functional as F

    return (
        F.normalize(model.encode_image(images), dim=-1),
        F.normalize(encode_text_prefix(model, tokens), dim=-1),
    )


def _value_embedding(model, tokenizer, base, name, value, rng, phrasings: int = 8):
    """The mean embedding of captions that state only ``name = value`` (a prompt ensemble,
    so one odd phrasing does not decide the zero-shot probe)."""
    import torch.nn.functional as F

    probe = {**base, name: value}
    captions = [scene_words.write_caption(probe, rng, {name}) for _ in range(phrasings)]
    texts = F.normalize(encode_text_prefix(model, tokenizer(captions)), dim=-1)
    return F.normalize(texts.mean(dim=0), dim=-1)


def evaluate_clip(model: Any, tokenizer: Any, held_out: RenderedScenes, seed: int) -> dict:
    """Retrieval top-1 and zero-shot attribute accuracy on scenes never trained on."""
    import torch

    rng = np.random.default_rng([EVAL_STREAM, seed])
    attrs = held_out.attributes
    captions = [scene_words.write_caption(a, rng) for a in attrs]
    model.eval()
    with torch.no_grad():
        images, texts = _encode(model, held_out.images, tokenizer(captions))
        sims = (texts @ images.T).numpy()  # (captions, images), one image per scene
        top1 = float(np.mean(sims.argmax(axis=1) == held_out.scene_of))
        per_attribute, chance = {}, {}
        for name in VISIBLE:
            values = sorted({a[name] for a in attrs}, key=str)
            value_texts = torch.stack(
                [_value_embedding(model, tokenizer, attrs[0], name, v, rng) for v in values]
            )
            guess = (images @ value_texts.T).argmax(dim=1).numpy()
            truth = [values.index(attrs[i][name]) for i in held_out.scene_of]
            per_attribute[name] = round(float(np.mean(guess == np.asarray(truth))), 4)
            chance[name] = round(1.0 / len(values), 4)
    return {
        "retrieval_top1": round(top1, 4),
        "retrieval_chance": round(1.0 / len(attrs), 4),
        "eval_scenes": len(attrs),
        "attribute_accuracy": per_attribute,
        "attribute_chance": chance,
    }


def train_clip(
    folder: str | Path,
    settings: TinyClipSection,
    geometry: SceneGeometry = DEMO_GEOMETRY,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the CLIP saved at ``folder`` (open_clip ``local-dir`` layout) in place.

    Returns the report: held-out retrieval and attribute accuracy, before and after.
    """
    import torch
    from safetensors.torch import save_file

    from ebmrl.models.loading import load_clip

    folder = Path(folder)
    with torch_threads(settings.torch_threads):
        model, preprocess, tokenizer = load_clip(folder)
        torch.manual_seed(seed)
        train = render_scenes(
            settings.train_scenes, seed, TRAIN_STREAM, geometry, preprocess,
            settings.frames_per_scene,
        )  # fmt: skip
        held_out = render_scenes(settings.eval_scenes, seed, EVAL_STREAM, geometry, preprocess, 1)
        before = evaluate_clip(model, tokenizer, held_out, seed)
        model.train()
        optimizers = _optimizers(model, settings)
        rng = np.random.default_rng([TRAIN_STREAM, seed, 1])
        losses = []
        for step in range(settings.steps):
            for optimizer in optimizers:
                optimizer.param_groups[0]["lr"] = _learning_rate(step, settings)
            batch = rng.choice(len(train.scene_of), size=settings.batch_size, replace=False)
            image_attrs = [train.attributes[train.scene_of[i]] for i in batch]
            mentions = [scene_words.random_mention(rng) for _ in batch]
            captions = [
                scene_words.write_caption(a, rng, m)
                for a, m in zip(image_attrs, mentions, strict=True)
            ]
            targets = torch.from_numpy(consistent(mentions, image_attrs, image_attrs))
            images, texts = _encode(model, train.images[batch], tokenizer(captions))
            logits = model.logit_scale.exp() * images @ texts.T
            loss = (
                _soft_cross_entropy(logits, targets) + _soft_cross_entropy(logits.T, targets.T)
            ) / 2
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            with torch.no_grad():  # CLIP's clamp: a temperature of at most 100
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
        model.token_embedding.sparse = False
        after = evaluate_clip(model, tokenizer, held_out, seed)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    report = {
        **after,
        "untrained": {k: before[k] for k in ("retrieval_top1", "attribute_accuracy")},
        "train_scenes": settings.train_scenes,
        "train_frames": len(train.scene_of),
        "steps": settings.steps,
        "loss_first": round(float(np.mean(losses[:20])), 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-20:])), 4) if losses else None,
    }
    with atomic_path(folder, is_dir=True) as tmp:
        config = "open_clip_config.json"  # unchanged: the architecture and preprocessing
        (tmp / config).write_bytes((folder / config).read_bytes())
        save_file(state, str(tmp / "open_clip_model.safetensors"))
        marker = json.loads((folder / "EBMRL_TINY.json").read_text())
        marker.update(
            random_weights=False,
            trained_on="demo scene grammar",
            training=settings.model_dump(),
            geometry=asdict(geometry),
        )
        (tmp / "EBMRL_TINY.json").write_text(json.dumps(marker) + "\n")
    return report


def _optimizers(model: Any, settings: TinyClipSection) -> list[Any]:
    """AdamW for the towers; lazy (sparse) Adam for the token embedding.

    The embedding holds 49,408 rows (open_clip's BPE vocabulary), of which the captions
    use about a hundred: a dense update of all of them was most of a step's time.
    """
    import torch

    embedding = model.token_embedding
    embedding.sparse = True
    rest = [p for name, p in model.named_parameters() if name != "token_embedding.weight"]
    return [
        torch.optim.AdamW(rest, lr=settings.learning_rate, weight_decay=settings.weight_decay),
        torch.optim.SparseAdam([embedding.weight], lr=settings.learning_rate),
    ]


def _learning_rate(step: int, settings: TinyClipSection) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = (step - settings.warmup_steps) / span
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
