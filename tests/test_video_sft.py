"""Contract tests for CoT-SFT on video: real video features, loss on the assistant turn only."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ebmrl import video
from ebmrl.frame_store import MemoryFrameStore
from ebmrl.models import load_vlm
from ebmrl.models.vlm import video_messages
from ebmrl.train.video_sft import IGNORE_INDEX, VideoSFTCollator

COMPLETION = (
    "<perception>Two figures.</perception>\n<think>Safe.</think>\n<answer>All quiet.</answer>"
)


@pytest.fixture(scope="module")
def store(demo_data):
    frame_store = MemoryFrameStore()
    for path in sorted(demo_data["videos"].glob("*.mp4"))[:2]:
        frame_store.add(path.stem, frames=video.sample_frames(path, count=4)[0])
    return frame_store


def rows(store, completion=COMPLETION):
    return [
        {
            "prompt": video_messages(f"Clip {i}: what do you see?", system="Play Mira."),
            "completion": [
                {"role": "assistant", "content": [{"type": "text", "text": completion}]}
            ],
            "clip_id": clip_id,
        }
        for i, clip_id in enumerate(store.clip_ids())
    ]


def test_labels_cover_exactly_the_assistant_turn(tiny_models, store):
    _, processor = load_vlm(tiny_models["vlm"])
    collator = VideoSFTCollator(processor, store)
    batch = collator(rows(store))
    assert "pixel_values_videos" in batch and "pixel_values" not in batch
    tokenizer = processor.tokenizer
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        kept = ids[labels != IGNORE_INDEX].tolist()
        assert tokenizer.decode(kept) == COMPLETION + "<|im_end|>\n"
        video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
        assert (labels == video_id).sum() == 0


def test_over_long_batches_are_refused(tiny_models, store):
    _, processor = load_vlm(tiny_models["vlm"])
    with pytest.raises(ValueError, match="max_length"):
        VideoSFTCollator(processor, store, max_length=16)(rows(store))


@pytest.mark.slow
def test_vision_tower_gets_gradient_in_an_sft_step(tiny_models, store, tmp_path):
    model, processor = load_vlm(tiny_models["vlm"])
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,  # as the stages on CPU
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    visual = [p for n, p in model.named_parameters() if "visual" in n]
    before = [p.detach().clone() for p in visual]
    norms = []

    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            norms.append(float(sum(p.grad.norm() for p in visual if p.grad is not None)))

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows(store)),
        processing_class=processor,
        data_collator=VideoSFTCollator(processor, store),
        callbacks=[Probe()],
    )
    trainer.train()
    assert norms and norms[0] > 0, "vision tower received no gradient: video dropped"
    assert any(not torch.equal(b, p) for b, p in zip(before, visual, strict=True))
