"""Give the tiny VLM what a real base model has: it can see (caption pretraining).

EBM-RL starts from a VLM that already sees (Qwen2.5-VL): the method teaches it to write
what it sees inside the role-play format and to let it shape the reply, not to see. The
tiny VLM's random weights cannot see, and SFT on the demo's forty samples does not teach
it to in minutes: its perceptions then follow the dialogue's text, not the clip, and no
reward can show the method working.

``train_captions`` pretrains it on clips of the demo's scene grammar rendered with seeds
of their own (never the demo's clips), each paired with a caption in varied words
(``ebmrl.scene_words``), under a plain instruction and the chat template, with no
role-play prompt and no tags: the base still knows nothing of the format (it scores -5
on it), but what it writes about a clip now depends on the clip. ``evaluate_captions``
reads greedy captions of held-out scenes back with the scene vocabulary: the share of
each attribute stated correctly, before and after.

The model is saved with ``save_pretrained`` in place, the layout ``load_vlm`` reads.
Deterministic for a seed (seeded data, fixed torch threads, no dropout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ebmrl.config import TinyVlmSection
from ebmrl import scene_words
from ebmrl.io import atomic_path
from ebmrl.models.scene_clips import (
    DEMO_GEOMETRY,
    EVAL_STREAM,
    TRAIN_STREAM,
    SceneClips,
    SceneGeometry,
    render_clips,
    torch_threads,
)

INSTRUCTION = "Describe what you see in the clip."
# Two-second clips: motion shows across the frames, rendering stays cheap.
CLIP_SECONDS = 2.0


def _frames(clips: SceneClips, count: int) -> list[np.ndarray]:
    """``count`` frames of each clip, evenly spread (as the frames stage samples them)."""
    out = []
    for clip in clips.clips:
        index = np.linspace(0, len(clip) - 1, min(count, len(clip))).astype(int)
        out.append(clip[index])
    return out


def _conversation(caption: str | None = None) -> list[dict[str, Any]]:
    from ebmrl.models.vlm import video_messages

    messages = video_messages(INSTRUCTION)
    if caption is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": caption}]})
    return messages


def caption_batch(processor: Any, captions: list[str], videos: list[np.ndarray]) -> Any:
    """Model inputs with ``labels`` on the caption tokens only (right padding)."""
    from ebmrl.models.vlm import encode

    full = encode(
        processor,
        [_conversation(c) for c in captions],
        videos,
        add_generation_prompt=False,
        padding_side="right",
    )
    prompt = encode(processor, [_conversation()] * len(captions), videos, padding_side="right")
    labels = full["input_ids"].clone()
    for row, length in enumerate(prompt["attention_mask"].sum(dim=1).tolist()):
        labels[row, :length] = -100
    labels[full["attention_mask"] == 0] = -100
    # The template follows <|im_end|> with a newline: the caption ends at <|im_end|>.
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in range(labels.shape[0]):
        ends = (labels[row] == end).nonzero()
        if len(ends):
            labels[row, int(ends[0]) + 1 :] = -100
    full["labels"] = labels
    return full


def evaluate_captions(model: Any, processor: Any, held_out: SceneClips, frames: int) -> dict:
    """Share of each attribute that greedy captions of unseen scenes state correctly."""
    from ebmrl.models.vlm import generate_text

    videos = _frames(held_out, frames)
    texts: list[str] = []
    for start in range(0, len(videos), 8):
        chunk = videos[start : start + 8]
        texts += generate_text(
            model, processor, [_conversation()] * len(chunk), chunk, max_new_tokens=48
        )
    correct: dict[str, list[bool]] = {name: [] for name in scene_words.ATTRIBUTES}
    for truth, text in zip(held_out.attributes, texts, strict=True):
        stated = scene_words.read_statements(text)
        for name in scene_words.ATTRIBUTES:
            correct[name].append(stated[name] == {truth[name]})
    per_attribute = {name: round(float(np.mean(v)), 4) for name, v in correct.items()}
    return {
        "caption_accuracy": round(float(np.mean(list(per_attribute.values()))), 4),
        "attribute_accuracy": per_attribute,
        "eval_scenes": len(videos),
    }


def train_captions(
    folder: str | Path,
    settings: TinyVlmSection,
    geometry: SceneGeometry = DEMO_GEOMETRY,
    seed: int = 0,
) -> dict[str, Any]:
    """Pretrain the VLM saved at ``folder`` (model + processor) to caption the scenes, in
    place. Returns held-out caption accuracy per attribute, before and after."""
    import torch

    from ebmrl.models.loading import load_vlm

    folder = Path(folder)
    with torch_threads(settings.torch_threads):
        model, processor = load_vlm(folder)
        torch.manual_seed(seed)
        train = render_clips(settings.train_scenes, seed, TRAIN_STREAM, geometry, CLIP_SECONDS)
        held_out = render_clips(settings.eval_scenes, seed, EVAL_STREAM, geometry, CLIP_SECONDS)
        videos = _frames(train, settings.frames)
        model.eval()
        before = evaluate_captions(model, processor, held_out, settings.frames)
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=settings.learning_rate, weight_decay=0.0
        )
        rng = np.random.default_rng([TRAIN_STREAM, seed, 2])
        losses = []
        for _ in range(settings.steps):
            batch = rng.choice(len(videos), size=settings.batch_size, replace=False)
            captions = [scene_words.write_caption(train.attributes[i], rng) for i in batch]
            inputs = caption_batch(processor, captions, [videos[i] for i in batch])
            loss = model(**inputs).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        model.eval()
        after = evaluate_captions(model, processor, held_out, settings.frames)
    report = {
        **after,
        "untrained": {k: before[k] for k in ("caption_accuracy", "attribute_accuracy")},
        "train_scenes": settings.train_scenes,
        "steps": settings.steps,
        "loss_first": round(float(np.mean(losses[:20])), 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-20:])), 4) if losses else None,
    }
    marker = json.loads((folder / "EBMRL_TINY.json").read_text())
    marker.update(random_weights=False, pretrained_on="demo scene captions",
                  training=settings.model_dump())  # fmt: skip
    with atomic_path(folder, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "EBMRL_TINY.json").write_text(json.dumps(marker) + "\n")
    return report
