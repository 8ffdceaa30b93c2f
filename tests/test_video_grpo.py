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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ------------------------------------------- the advantages and the loss are the paper's
class RecordingTrainer(VideoGRPOTrainer):
    """Records what enters the loss: each row's completion ids and advantage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_rows: list[tuple[tuple[int, ...], float]] = []

    def _compute_loss(self, model, inputs):
        ids, mask = inputs["completion_ids"], inputs["completion_mask"]
        for row, m, a in zip(ids, mask, inputs["advantages"], strict=True):
            self.loss_rows.append((tuple(row[m.bool()].tolist()), float(a)))
        return super()._compute_loss(model, inputs)


def recording_rewards():
    """Three rewards with the awkward cases: varied, constant within a group, None."""
    generated: list[tuple[int, ...]] = []

    def varied(completions, completion_ids, **kwargs):
        generated.extend(tuple(c) for c in completion_ids)
        return varied_reward(completions)

    def constant_first(completions, completion_ids, **kwargs):
        return [1.0] * 4 + [float(len(c)) for c in completion_ids[4:]]

    def sometimes_none(completions, completion_ids, **kwargs):
        return [None if i % 3 == 0 else float(len(c) % 5) for i, c in enumerate(completion_ids)]

    return [varied, constant_first, sometimes_none], generated


@pytest.mark.slow
def test_advantages_in_the_loss_are_combine_of_the_logged_rewards(
    tiny_models, frame_store, tmp_path
):
    from ebmrl.rewards.aggregate import combine

    funcs, generated = recording_rewards()
    weights = [1.0, 0.5, 0.8]
    model, processor = load_vlm(tiny_models["vlm"])
    trainer = RecordingTrainer(
        model=model,
        reward_funcs=funcs,
        args=grpo_args(tmp_path, per_device_train_batch_size=8, reward_weights=weights),
        train_dataset=make_dataset(frame_store),
        processing_class=processor,
        frame_store=frame_store,
    )
    trainer.train()
    names = [f.__name__ for f in funcs]
    logged = {n: list(trainer._logs["rewards"][n]) for n in names}
    expected = combine(logged, dict(zip(names, weights, strict=True)), group_size=4)
    assert any(abs(a) > 0.1 for a in expected)
    # TRL's own aggregation differs (eps 1e-4 and a batch re-standardisation) ...
    from ebmrl.rewards.trl_adapter import trl_advantages

    trl = trl_advantages(logged, dict(zip(names, weights, strict=True)), group_size=4)
    assert max(abs(a - b) for a, b in zip(trl, expected, strict=True)) > 1e-3
    # ... and the loss gets ours, row by row (TRL shuffles rows: match by completion).
    assert len(trainer.loss_rows) == len(generated) == 8
    for completion, advantage in trainer.loss_rows:
        rows = [i for i, g in enumerate(generated) if g == completion]
        assert rows and any(abs(advantage - expected[i]) < 1e-6 for i in rows)
    assert list(trainer._logs["advantages"]) == pytest.approx(expected, abs=1e-6)


def crafted_loss_batch(trainer, model):
    """A batch by hand: random prompt + completion tokens (no video), a reference whose
    log-probs differ from the policy's by -15 .. +15 (beyond the clamp at both ends)."""
    g = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size
    prompt_ids = torch.randint(10, vocab - 10, (4, 5), generator=g)
    completion_ids = torch.randint(10, vocab - 10, (4, 6), generator=g)
    completion_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] * 2 + [0] * 4])
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([torch.ones_like(prompt_ids), completion_mask], dim=1)
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(model, ids, mask, 6)[0]
    offsets = torch.tensor([-15.0, -10.5, -3.0, 0.0, 3.0, 15.0]).repeat(4, 1)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.5, -0.5, 0.25, -1.25]),
        "ref_per_token_logps": logps + offsets,
        "num_items_in_batch": completion_mask.sum(),
    }
    return inputs, ids, mask


def authors_loss(trainer, model, inputs, ids, mask, beta, clamp):
    """EBM_RP_trainer's loss, by hand: clamped k3 KL, per-completion token mean, mean."""
    logps = trainer._get_per_token_logps_and_entropies(model, ids, mask, 6)[0]
    x = inputs["ref_per_token_logps"] - logps
    if clamp is not None:
        x = torch.clamp(x, min=-clamp, max=clamp)
    kl = torch.exp(x) - x - 1
    per_token = -(torch.exp(logps - logps.detach()) * inputs["advantages"][:, None] - beta * kl)
    cmask = inputs["completion_mask"]
    return ((per_token * cmask).sum(dim=1) / cmask.sum(dim=1)).mean()


@pytest.mark.parametrize("clamp", [10.0, None])
def test_kl_log_ratio_clamp_on_a_crafted_batch(tiny_models, frame_store, tmp_path, clamp):
    model, processor = load_vlm(tiny_models["vlm"])
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=[varied_reward],
        args=grpo_args(tmp_path, loss_type="grpo", use_bias_correction_kl=False),
        train_dataset=make_dataset(frame_store),
        processing_class=processor,
        frame_store=frame_store,
        kl_clamp=clamp,
    )
    trainer.current_gradient_accumulation_steps = 1
    model.train()
    inputs, ids, mask = crafted_loss_batch(trainer, model)
    params = [p for p in model.parameters() if p.requires_grad][-3:]
    ours = trainer._compute_loss(model, dict(inputs))
    ours_grads = torch.autograd.grad(ours, params)
    expected = authors_loss(trainer, model, inputs, ids, mask, beta=0.04, clamp=clamp)
    expected_grads = torch.autograd.grad(expected, params)
    assert float(ours.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    for a, b in zip(ours_grads, expected_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    if clamp is not None:
        # The clamp matters here: unclamped, exp(15) dominates the loss.
        unclamped = authors_loss(trainer, model, inputs, ids, mask, beta=0.04, clamp=None)
        assert float(unclamped.detach()) > 10 * float(ours.detach())
        # The logged KL is the clamped one: token mean of exp(x) - x - 1 over the mask.
        with torch.no_grad():
            logps = trainer._get_per_token_logps_and_entropies(model, ids, mask, 6)[0]
        x = (inputs["ref_per_token_logps"] - logps).clamp(-clamp, clamp)
        cmask = inputs["completion_mask"]
        kl = ((torch.exp(x) - x - 1) * cmask).sum() / cmask.sum()
        assert trainer._metrics["train"]["kl"][-1] == pytest.approx(float(kl), rel=1e-5)


def test_a_non_positive_kl_clamp_is_refused(tiny_models, frame_store, tmp_path):
    model, processor = load_vlm(tiny_models["vlm"])
    with pytest.raises(ValueError, match="kl_clamp must be > 0"):
        VideoGRPOTrainer(
            model=model,
            reward_funcs=[varied_reward],
            args=grpo_args(tmp_path),
            train_dataset=make_dataset(frame_store),
            processing_class=processor,
            frame_store=frame_store,
            kl_clamp=0,
        )
