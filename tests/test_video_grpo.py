"""Contract tests for the video GRPO subclass (TRL internals are pinned; these fail loudly)."""

from __future__ import annotations

import pytest
import torch
from conftest import grpo_args, make_dataset, tiny_trainer, varied_reward
from datasets import Dataset
from transformers import TrainerCallback

from ebmrl.models import load_vlm
from ebmrl.models.shared_prefix import VisionCalls
from ebmrl.models.vlm import video_messages
from ebmrl.train.video_grpo import VideoGRPOTrainer, strip_none_keys


class VisionGradProbe(TrainerCallback):
    """Records the gradient norm of the vision tower just before each optimizer step."""

    def __init__(self, model):
        self.visual = [p for n, p in model.named_parameters() if "visual" in n]
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        grads = [p.grad.norm() for p in self.visual if p.grad is not None]
        self.norms.append(float(torch.stack(grads).sum()) if grads else 0.0)


class PolicyPassProbe(VideoGRPOTrainer):
    """Records, for each policy pass under training, its rows and the videos the vision
    tower encoded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy_passes: list[tuple[int, int]] = []

    def _logps_and_entropies(self, model, input_ids, *args, **kwargs):
        if not torch.is_grad_enabled():
            return super()._logps_and_entropies(model, input_ids, *args, **kwargs)
        with VisionCalls(self.accelerator.unwrap_model(model)) as calls:
            out = super()._logps_and_entropies(model, input_ids, *args, **kwargs)
        self.policy_passes.append((input_ids.size(0), calls.items))
        return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shared_prefix", "checkpointing", "videos"),
    [(True, False, 1), (False, False, 4), (True, True, 4)],
    ids=["shared-prefix", "row-by-row", "checkpointing-row-by-row"],
)
def test_vision_tower_gets_gradient_in_a_grpo_step(
    tiny_models, frame_store, tmp_path, shared_prefix, checkpointing, videos
):
    trainer, model, _ = tiny_trainer(
        tiny_models, frame_store, tmp_path, shared_prefix=shared_prefix, cls=PolicyPassProbe,
        args=grpo_args(tmp_path, activation_checkpointing=checkpointing),
    )  # fmt: skip
    probe = VisionGradProbe(model)
    trainer.add_callback(probe)
    trainer.train()
    assert probe.norms and probe.norms[0] > 0, "vision tower received no gradient: video dropped"
    # One prompt, G = 4: the shared policy pass encodes its clip once, not once per row;
    # gradient checkpointing keeps no cache to share, so its policy pass runs row by row.
    assert trainer.policy_passes == [(4, videos)]
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


# ------------------------------------ no-gradient passes: one prompt + video per group
class BothWaysTrainer(VideoGRPOTrainer):
    """Runs every no-gradient log-prob pass both ways, shared prefixes and row by row, on
    the step's real batch; records both results and the videos the vision tower encoded
    for each. Training continues on the shared result."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes: list[dict] = []

    def _logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kw):
        if torch.is_grad_enabled():
            return super()._logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, **kw
            )
        record = {"mask": attention_mask[:, -logits_to_keep:], "rows": input_ids.size(0)}
        for shared in (False, True):
            self.shared_prefix = shared
            with VisionCalls(self.accelerator.unwrap_model(model)) as calls:
                out = super()._logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, **kw
                )
            record[shared] = (out[0], calls.items)
        self.passes.append(record)
        return out


def test_reference_and_old_policy_passes_share_each_prompt_and_equal_row_by_row(
    tiny_models, frame_store, tmp_path
):
    model, processor = load_vlm(tiny_models["vlm"])
    trainer = BothWaysTrainer(
        model=model,
        reward_funcs=[varied_reward],
        # 2 prompts x G = 4; two iterations per batch make TRL compute old log-probs.
        args=grpo_args(tmp_path, per_device_train_batch_size=8, num_iterations=2),
        train_dataset=make_dataset(frame_store),
        processing_class=processor,
        frame_store=frame_store,
    )
    trainer.train()
    assert len(trainer.passes) == 2  # old policy, then reference
    for record in trainer.passes:
        (row_logps, row_videos), (shared_logps, shared_videos) = record[False], record[True]
        assert record["rows"] == 8
        assert row_videos == 8 and shared_videos == 2  # one clip per prompt, not per row
        mask = record["mask"].bool()
        assert mask.sum() > 8
        diff = (shared_logps - row_logps)[mask].abs().max()
        assert float(diff) <= 1e-4, float(diff)
    # The step's breakdown, every optimiser step, next to TRL's step_time.
    logged = trainer.state.log_history[0]
    for key in (
        "step_time",
        "timing/generation",
        "timing/rewards",
        "timing/rewards/varied_reward",
        "timing/old_policy_pass",
        "timing/reference_pass",
        "timing/policy_forward_backward",
    ):
        assert logged.get(key, 0) > 0, key
    parts = logged["timing/generation"] + logged["timing/policy_forward_backward"]
    assert parts < logged["step_time"] * 1.05


def crafted_video_batch(trainer, processor, store, copies=3):
    """Two prompts (different lengths) over two clips, ``copies`` completions each with
    different padding, as TRL lays them out; the trainer's video rows set."""
    from ebmrl.models.vlm import encode
    from ebmrl.train.video_grpo import VideoRows

    clip_ids = store.clip_ids()
    convs = [video_messages("What now?"), video_messages("Tell me, what is happening there?")]
    encoded = encode(processor, convs, [store.frames(c) for c in clip_ids])
    ids = encoded["input_ids"].repeat_interleave(copies, 0)
    mask = encoded["attention_mask"].repeat_interleave(copies, 0)
    g = torch.Generator().manual_seed(1)
    completion = torch.randint(10, 500, (ids.size(0), 6), generator=g)
    completion_mask = torch.ones_like(completion)
    for row in range(ids.size(0)):
        completion_mask[row, 6 - row % 4 :] = 0
    grid = encoded["video_grid_thw"]
    pixels = list(torch.split(encoded["pixel_values_videos"], grid.prod(dim=-1).tolist()))
    trainer._video_rows = VideoRows(
        [pixels[r // copies] for r in range(ids.size(0))],
        grid.repeat_interleave(copies, 0),
        encoded["second_per_grid_ts"].repeat_interleave(copies, 0),
    )
    return torch.cat([ids, completion], 1), torch.cat([mask, completion_mask], 1)


def logps_both_ways(trainer, model, ids, mask, **kw):
    out = {}
    for shared in (False, True):
        trainer.shared_prefix = shared
        with torch.no_grad(), VisionCalls(model) as calls:
            logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
                model, ids, mask, 6, **kw
            )
        out[shared] = (logps, entropies, calls.items)
    return out


def test_shared_prefix_equals_row_by_row_with_groups_split_and_entropies(
    tiny_models, frame_store, tmp_path
):
    trainer, model, processor = tiny_trainer(tiny_models, frame_store, tmp_path)
    ids, mask = crafted_video_batch(trainer, processor, frame_store)
    valid = mask[:, -6:].bool()
    # Batches of 2 rows cut each group of 3: a group's prefix is run once per piece.
    out = logps_both_ways(trainer, model, ids, mask, batch_size=2, compute_entropy=True)
    (row_logps, row_entropy, row_videos), (logps, entropy, videos) = out[False], out[True]
    assert (row_videos, videos) == (6, 4)
    assert torch.allclose(logps[valid], row_logps[valid], atol=1e-4)
    assert torch.allclose(entropy[valid], row_entropy[valid], atol=1e-4)
    out = logps_both_ways(trainer, model, ids, mask, batch_size=6)
    assert (out[False][2], out[True][2]) == (6, 2)
    assert torch.allclose(out[True][0][valid], out[False][0][valid], atol=1e-4)


def test_the_policy_pass_on_shared_prefixes_has_the_row_by_row_gradients(
    tiny_models, frame_store, tmp_path
):
    """Under training the gradient reaches each prompt + clip through its cached keys and
    values: every parameter's gradient, the vision tower's included, is the one of
    running each row whole."""
    trainer, model, processor = tiny_trainer(tiny_models, frame_store, tmp_path)
    ids, mask = crafted_video_batch(trainer, processor, frame_store)
    valid = mask[:, -6:].float()
    model.train()
    grads, videos, logps = {}, {}, {}
    for shared in (False, True):
        trainer.shared_prefix = shared
        model.zero_grad()
        with VisionCalls(model) as calls:
            logps[shared], entropies, _ = trainer._get_per_token_logps_and_entropies(
                model, ids, mask, 6, compute_entropy=True
            )
        # A loss of TRL's shape: per-token terms weighted by row, entropy among them.
        weights = torch.arange(1.0, ids.size(0) + 1).unsqueeze(1)
        ((logps[shared] * weights + 0.1 * entropies) * valid).sum().backward()
        grads[shared] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
        videos[shared] = calls.items
    assert videos == {False: 6, True: 2}
    assert torch.allclose(logps[True][valid.bool()], logps[False][valid.bool()], atol=1e-4)
    assert grads[True].keys() == grads[False].keys()
    visual = [g for n, g in grads[True].items() if "visual" in n]
    assert visual and sum(float(g.abs().sum()) for g in visual) > 0
    for name, row_grad in grads[False].items():
        scale = float(row_grad.abs().max()) or 1.0
        diff = float((grads[True][name] - row_grad).abs().max())
        assert diff <= 1e-4 * scale, (name, diff, scale)


def test_a_model_that_cannot_share_a_prefix_is_scored_row_by_row(
    tiny_models, frame_store, tmp_path, caplog
):
    trainer, model, processor = tiny_trainer(tiny_models, frame_store, tmp_path)
    ids, mask = crafted_video_batch(trainer, processor, frame_store)
    model.config.get_text_config().use_sliding_window = True  # a layout we do not share
    with caplog.at_level("WARNING", logger="ebmrl.train.video_grpo"):
        out = logps_both_ways(trainer, model, ids, mask)
    assert out[True][2] == out[False][2] == 6
    assert torch.equal(out[True][0], out[False][0])
    assert "shared prefixes off for this model (sliding-window attention layers)" in caplog.text


def test_the_step_breakdown_stays_out_of_dvc_outputs():
    from ebmrl.train.grpo import without_timings

    logged = {"reward": 1.0, "step_time": 3.0, "timing/generation": 2.0}
    logged["timing/rewards/pcg"] = 0.5
    assert without_timings(logged) == {"reward": 1.0}


@pytest.mark.slow
def test_step_breakdown_reaches_a_real_mlflow_store_every_step(
    tiny_models, frame_store, tmp_path, monkeypatch
):
    import mlflow

    from ebmrl.train.grpo import timings_out_of_the_state

    def short_reward(completions, **kwargs):
        return [1.0 / (1 + len(str(c))) for c in completions]

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model, processor = load_vlm(tiny_models["vlm"])
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=[varied_reward, short_reward],
        args=grpo_args(tmp_path, max_steps=2, report_to=["mlflow"]),
        train_dataset=make_dataset(frame_store),
        processing_class=processor,
        frame_store=frame_store,
        callbacks=[timings_out_of_the_state()],  # as the GRPO stage has it
    )
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("step-breakdown")
        with mlflow.start_run() as run:
            trainer.train()
    finally:
        mlflow.set_tracking_uri(before)
    client = mlflow.MlflowClient(uri)
    keys = ["step_time", "timing/generation", "timing/rewards", "timing/reference_pass"]
    keys += ["timing/rewards/varied_reward", "timing/rewards/short_reward"]
    keys += ["timing/policy_forward_backward"]
    history = {
        key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        for key in keys
    }
    for key, series in history.items():
        assert sorted(series) == [1, 2] and min(series.values()) > 0, (key, series)
    for step, total in history["step_time"].items():
        split = history["timing/generation"][step] + history["timing/policy_forward_backward"][step]
        assert split < total * 1.05, (step, split, total)
        per_reward = sum(
            history[f"timing/rewards/{n}"][step] for n in ("varied_reward", "short_reward")
        )
        assert per_reward <= history["timing/rewards"][step] * 1.05
    # MLflow has them; the trainer's state (what checkpoints and DVC outputs keep) does not.
    assert not [k for entry in trainer.state.log_history for k in entry if "timing/" in k]
