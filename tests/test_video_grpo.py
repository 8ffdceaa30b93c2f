"""Contract tests for the video GRPO subclass (TRL internals are pinned; these fail loudly)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig

from ebmrl import video
from ebmrl.frame_store import MemoryFrameStore
from ebmrl.models import load_vlm
from ebmrl.models.vlm import video_messages
from ebmrl.train.video_grpo import VideoGRPOTrainer, strip_none_keys


def varied_reward(completions, **kwargs):
    """Deterministic but different per completion, so group advantages are non-zero."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(sum(map(ord, t)) % 11) for t in texts]


class VisionGradProbe(TrainerCallback):
    """Records the gradient norm of the vision tower just before each optimizer step."""

    def __init__(self, model):
        self.visual = [p for n, p in model.named_parameters() if "visual" in n]
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        grads = [p.grad.norm() for p in self.visual if p.grad is not None]
        self.norms.append(float(torch.stack(grads).sum()) if grads else 0.0)


@pytest.fixture(scope="module")
def frame_store(demo_data):
    store = MemoryFrameStore()
    for path in sorted(demo_data["videos"].glob("*.mp4"))[:2]:
        frames, _, _ = video.sample_frames(path, count=4)
        store.add(path.stem, frames=frames)
    return store


def grpo_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=1e-3,
        beta=0.04,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    values.update(overrides)
    return GRPOConfig(**values)


def make_dataset(store):
    rows = [
        {"prompt": video_messages(f"Describe clip {i}."), "clip_id": clip_id}
        for i, clip_id in enumerate(store.clip_ids())
    ]
    return Dataset.from_list(rows)


def tiny_trainer(tiny_models, store, tmp_path, **kwargs):
    """A VideoGRPOTrainer on the tiny VLM with the varied reward; returns it with its model
    and processor."""
    model, processor = load_vlm(tiny_models["vlm"])
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=[varied_reward],
        args=grpo_args(tmp_path),
        train_dataset=make_dataset(store),
        processing_class=processor,
        frame_store=store,
        **kwargs,
    )
    return trainer, model, processor


def test_vision_tower_gets_gradient_in_a_grpo_step(tiny_models, frame_store, tmp_path):
    trainer, model, _ = tiny_trainer(tiny_models, frame_store, tmp_path)
    probe = VisionGradProbe(model)
    trainer.add_callback(probe)
    trainer.train()
    assert probe.norms and probe.norms[0] > 0, "vision tower received no gradient: video dropped"
    logged = trainer.state.log_history[0]
    assert "rewards/varied_reward/mean" in logged and "kl" in logged


def test_pad_tokens_are_suppressed_in_generation(tiny_models, frame_store, tmp_path):
    trainer, model, _ = tiny_trainer(tiny_models, frame_store, tmp_path)
    suppressed = set(trainer.generation_config.suppress_tokens)
    assert {model.config.video_token_id, model.config.image_token_id} <= suppressed


def test_missing_clip_is_a_clear_error(tiny_models, frame_store, tmp_path):
    from ebmrl.frame_store import MissingClipError

    model, processor = load_vlm(tiny_models["vlm"])
    rows = Dataset.from_list([{"prompt": video_messages("x"), "clip_id": "nope"}] * 2)
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=[varied_reward],
        args=grpo_args(tmp_path),
        train_dataset=rows,
        processing_class=processor,
        frame_store=frame_store,
    )
    with pytest.raises(MissingClipError, match="nope"):
        trainer.train()


def test_strip_none_keys():
    message = {"role": "user", "content": [{"type": "text", "text": "hi", "video": None}]}
    assert strip_none_keys(message) == {"role": "user", "content": [{"type": "text", "text": "hi"}]}
