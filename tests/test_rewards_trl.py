"""The TRL adapter: our advantages equal a real GRPOTrainer's, and our reward functions run
inside a real GRPOTrainer step with their names and diagnostics in the logs."""

import math
import re

import numpy as np
import pytest

from ebmrl import config, video
from ebmrl.frame_store import MemoryFrameStore
from ebmrl.models import load_vlm
from ebmrl.rewards import aggregate
from ebmrl.rewards.answer import make_bert_scorer
from ebmrl.rewards.clip import OpenClipEncoder
from ebmrl.rewards.embed import HFSentenceEmbedder
from ebmrl.rewards.likelihood import VideoLikelihoodScorer
from ebmrl.rewards.registry import RewardModels
from ebmrl.rewards.trl_adapter import TRL_EPS, build_reward_funcs, trl_advantages

G = 4  # completions per prompt; two prompts per step


@pytest.fixture(scope="module")
def tiny_policy():
    """A tiny text-only Qwen2 policy (config + tokenizer): the reward path of GRPOTrainer
    does not need vision."""
    from transformers import Qwen2Config

    from ebmrl.models.tiny import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )
    return cfg, tokenizer


def run_one_grpo_step(tiny_policy, tmp_path, reward_funcs, rows, **config_kwargs):
    """Train one step; return the trainer (its logs hold rewards and advantages)."""
    import torch
    from datasets import Dataset
    from transformers import Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    cfg, tokenizer = tiny_policy
    torch.manual_seed(0)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2 * G,
        num_generations=G,
        max_completion_length=8,
        max_steps=1,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,  # as the stages on CPU
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        shuffle_dataset=False,
        seed=0,
        **config_kwargs,
    )
    trainer = GRPOTrainer(
        model=Qwen2ForCausalLM(cfg),
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
    )
    trainer.train()
    return trainer


def conversation(text):
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]


ROWS = [
    {"prompt": conversation("What now?"), "clip_id": "c0", "reference": "Run!", "prompt_id": "p0"},
    {"prompt": conversation("And now?"), "clip_id": "c1", "reference": "Stay.", "prompt_id": "p1"},
]

# Per-row rewards for one step (rows = 2 prompts x G completions), with every awkward
# case: a missing value, a constant group (answer, 2nd prompt), a single present value
# (clip, 2nd prompt) and an unscorable row (the last: every reward None).
TABLE = {
    "format": [5.0, -5.0, 3.5, 5.0, -1.0, 2.0, 2.0, None],
    "answer": [0.9, 0.1, None, 0.5, 0.3, 0.3, 0.3, None],
    "clip": [0.31, 0.29, 0.35, None, None, None, 0.2, None],
    "pcg": [None, 0.4, -1.2, 0.05, 0.7, -0.3, 0.1, None],
}
WEIGHTS = {"format": 1.0, "answer": 1.0, "clip": 0.8, "pcg": 0.8}


def table_reward(name):
    def reward(prompts, completions, completion_ids, **_):
        assert len(completions) == 2 * G
        return TABLE[name]

    reward.__name__ = name
    return reward


@pytest.mark.parametrize("mode", ["normalize_then_sum", "sum_then_normalize"])
@pytest.mark.slow
def test_combine_gives_the_advantages_of_a_real_grpo_step(tiny_policy, tmp_path, mode):
    trainer = run_one_grpo_step(
        tiny_policy,
        tmp_path,
        [table_reward(name) for name in TABLE],
        ROWS,
        reward_weights=[WEIGHTS[n] for n in TABLE],
        multi_objective_aggregation=mode,
        scale_rewards="group",
    )
    # What TRL received is our table (so the comparison below is not vacuous) ...
    logged = {name: list(trainer._logs["rewards"][name]) for name in TABLE}
    for name, values in TABLE.items():
        expected = [math.nan if v is None else v for v in values]
        assert logged[name] == pytest.approx(expected, nan_ok=True, rel=1e-6)
    trl = list(trainer._logs["advantages"])
    assert len(trl) == 2 * G and any(abs(a) > 0.1 for a in trl)
    # ... and the advantages it computed are ours with TRL's constants.
    ours = trl_advantages(TABLE, WEIGHTS, group_size=G, mode=mode)
    assert ours == pytest.approx(trl, rel=1e-4, abs=1e-4)
    assert ours[-1] == 0.0  # the unscorable row


def test_trl_normalize_then_sum_is_the_papers_up_to_a_positive_scale():
    # Same epsilon: TRL's extra batch-level standardisation only rescales the advantages.
    paper = np.array(aggregate.combine(TABLE, WEIGHTS, group_size=G, eps=TRL_EPS))
    trl = np.array(trl_advantages(TABLE, WEIGHTS, group_size=G))
    scorable = np.array([v is not None for v in TABLE["format"]])
    ratio = trl[scorable] / paper[scorable]
    assert np.all(ratio > 0) and ratio == pytest.approx(np.full_like(ratio, ratio[0]), rel=1e-9)


# ------------------------------------------------------- our functions inside TRL
@pytest.fixture(scope="module")
def reward_deps(tiny_models, demo_data):
    clip_encoder = OpenClipEncoder.load(str(tiny_models["clip"]))
    store = MemoryFrameStore()
    for clip_id, path in zip(("c0", "c1"), sorted(demo_data["videos"].glob("*.mp4")), strict=False):
        frames, _, _ = video.sample_frames(path)
        store.add(clip_id, frames=frames, embeddings=clip_encoder.encode_frames(frames))
    vlm, processor = load_vlm(tiny_models["vlm"])
    return RewardModels(
        clip_encoder=clip_encoder,
        frame_store=store,
        answer_scorer=make_bert_scorer(str(tiny_models["text_encoder"]), 2),
        pcg_scorer=VideoLikelihoodScorer(vlm, processor, store),
        sentence_embedder=HFSentenceEmbedder.load(str(tiny_models["text_encoder"])),
    )


def params_with(**rewards):
    data = {"rewards": {"weights": {"answer": 1.0, "format": 1.0, "clip": 0.8, "pcg": 0.8}}}
    data["rewards"].update(rewards)
    return config.validate(data)


@pytest.mark.slow
def test_our_reward_functions_run_in_a_real_grpo_step(tiny_policy, tmp_path, reward_deps):
    params = params_with(pcg={"leak_filter": {"enabled": True, "threshold": 0.9}})
    setup = build_reward_funcs(params.rewards, params.tag_names(), reward_deps)
    assert setup.names == ["format", "answer", "clip", "pcg"]
    trainer = run_one_grpo_step(
        tiny_policy, tmp_path, setup.funcs, ROWS, **setup.grpo_config_kwargs()
    )
    logs = trainer.state.log_history[0]
    for name in setup.names:
        assert math.isfinite(logs[f"rewards/{name}/mean"])
        assert all(math.isfinite(v) for v in trainer._logs["rewards"][name])
    for metric in (
        "rewards/clip/truncation_rate",
        "rewards/clip/missing_rate",
        "rewards/answer/missing_rate",
        "rewards/pcg/missing_rate",
        "rewards/pcg/leak_removal_rate",
        "rewards/format/perfect_rate",
    ):
        assert metric in logs, sorted(logs)
    # A random tiny policy writes no tags: every block is missing.
    assert logs["rewards/answer/missing_rate"] == 1.0
    assert logs["rewards/format/mean"] < 0


def test_functions_score_well_formed_completions_with_trl_kwargs(reward_deps):
    """The call TRL makes, with completions the random policy cannot write."""
    setup = build_reward_funcs(params_with().rewards, models=reward_deps)
    good = (
        "<perception>Two white figures walk left in a dim street.</perception>\n"
        "<think>The scene is calm.</think>\n<answer>Run!</answer>"
    )
    completions = [[{"role": "assistant", "content": c}] for c in (good, "junk", good, "")]
    columns = {
        "clip_id": ["c0"] * 4,
        "reference": ["Run!"] * 4,
        "prompt_id": ["p0"] * 4,
    }
    metrics = {}
    out = {}
    for func in setup.funcs:
        out[func.__name__] = func(
            prompts=[ROWS[0]["prompt"]] * 4,
            completions=completions,
            completion_ids=[[1]] * 4,
            trainer_state=None,
            log_extra=lambda column, values: None,
            log_metric=metrics.__setitem__,
            **columns,
        )
    assert out["format"] == [5.0, -5.0, 5.0, -5.0]
    assert out["answer"] == pytest.approx([1.0, 0.0, 1.0, 0.0])  # identical to the reference
    assert out["clip"][1] == out["clip"][3] == 0.0 and -1 <= out["clip"][0] <= 1
    assert out["clip"][0] == out["clip"][2] != 0.0
    assert out["pcg"][1] == out["pcg"][3] == 0.0 and out["pcg"][0] == out["pcg"][2] != 0.0
    assert metrics["rewards/answer/missing_rate"] == 0.5
    assert metrics["rewards/pcg/baseline_queries"] == 1.0


def test_functions_read_the_tags_in_use(reward_deps):
    """With the authors' tags every reward reads <vision> (and not <perception>)."""
    params = config.validate({"tags": ["vision", "think", "answer"]})
    setup = build_reward_funcs(params.rewards, params.tag_names(), reward_deps)
    funcs = {f.__name__: f for f in setup.funcs}
    ours = "<perception>Two figures.</perception>\n<think>Calm.</think>\n<answer>Run!</answer>"
    theirs = ours.replace("perception>", "vision>")
    kwargs = {
        "prompts": [ROWS[0]["prompt"]] * 2,
        "completion_ids": [[1]] * 2,
        "clip_id": ["c0"] * 2,
        "reference": ["Run!"] * 2,
        "prompt_id": ["p7"] * 2,
        "problem_type": ["free-form", "multiple-choice"],
    }
    completions = [theirs, ours]
    # ours: 4 tags once, 2 absent (+1.0); no order; does not start with <vision> (-1); end +0.5
    assert funcs["format"](completions=completions, **kwargs) == [5.0, 1.0 - 1.0 + 0.5]
    assert funcs["clip"](completions=completions, **kwargs)[1] == 0.0
    assert funcs["clip"](completions=completions, **kwargs)[0] != 0.0
    assert funcs["pcg"](completions=completions, **kwargs)[1] == 0.0
    # The answer block is the same in both; the second row is not free-form: 0.
    assert funcs["answer"](completions=completions, **kwargs) == pytest.approx([1.0, 0.0])


def test_weights_and_aggregation_come_from_params(reward_deps):
    params = config.validate(
        {"rewards": {"weights": {"answer": 0.5, "format": 0.0, "clip": 0.25, "pcg": 2.0}}}
    )
    setup = build_reward_funcs(params.rewards, models=reward_deps)
    assert setup.names == ["answer", "clip", "pcg"]  # a zero weight is not computed
    # TRL gets the weights only (for its logged `reward`); VideoGRPOTrainer aggregates.
    assert setup.grpo_config_kwargs() == {"reward_weights": [0.5, 0.25, 2.0]}
    assert setup.aggregation == "normalize_then_sum"
    setup = build_reward_funcs(
        params_with(aggregation="sum_then_normalize").rewards, models=reward_deps
    )
    assert setup.aggregation == "sum_then_normalize"
    assert setup.weights == [1.0, 1.0, 0.8, 0.8]


def test_a_missing_dependency_is_named():
    with pytest.raises(ValueError, match="clip reward needs clip_encoder"):
        build_reward_funcs(
            params_with().rewards, models=RewardModels(answer_scorer=object(), pcg_scorer=object())
        )
    params = config.validate(
        {"rewards": {"weights": {"answer": 0, "format": 1.0, "clip": 0, "pcg": 0}}}
    )
    assert build_reward_funcs(params.rewards).names == ["format"]  # nothing else needed


@pytest.mark.slow
def test_a_reward_added_through_params_alone_is_trained_on_and_logged(tiny_policy, tmp_path):
    """One function (tests/toy_rewards.py) and two params keys: TRL trains on it and logs
    rewards/brevity/mean next to the built-in rewards, with its diagnostics."""
    params = config.validate(
        {
            "rewards": {
                "functions": {"brevity": "toy_rewards:brevity"},
                "weights": {"answer": 0, "format": 1.0, "clip": 0, "pcg": 0, "brevity": 0.5},
            }
        }
    )
    setup = build_reward_funcs(params.rewards, params.tag_names())
    assert setup.names == ["format", "brevity"] and setup.weights == [1.0, 0.5]
    trainer = run_one_grpo_step(
        tiny_policy, tmp_path, setup.funcs, ROWS, **setup.grpo_config_kwargs()
    )
    logs = trainer.state.log_history[0]
    assert 0 < logs["rewards/brevity/mean"] <= 1
    assert "rewards/brevity/empty_rate" in logs
    assert len(trainer._logs["rewards"]["brevity"]) == 2 * G


def test_a_reward_without_its_column_names_the_column():
    params = config.validate(
        {
            "rewards": {
                "functions": {"speaker": "toy_rewards:needs_speaker"},
                "weights": {"answer": 0, "format": 0, "clip": 0, "pcg": 0, "speaker": 1.0},
            }
        }
    )
    (func,) = build_reward_funcs(params.rewards).funcs
    assert func(prompts=["p"], completions=["a"], speaker=["Ann"]) == [1.0]
    with pytest.raises(ValueError, match="speaker reward needs the dataset column 'speaker'"):
        func(prompts=["p"], completions=["a"], reference=["r"])


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        (
            {"weights": {"answer": 1, "format": 1, "clip": 1, "pcg": 1, "brevity": 1}},
            "rewards.weights.brevity: unknown key",
        ),
        (
            {"functions": {"brevity": "toy_rewards:brevity"}},
            "rewards.weights.brevity: missing",
        ),
        (
            {"weights": {"answer": 1, "format": 1, "clip": 1}},
            "rewards.weights.pcg: missing",
        ),
        (
            {"functions": {"brevity": "toy_rewards:brevty"}},
            "rewards.functions.brevity: cannot import toy_rewards:brevty",
        ),
        ({"functions": {"clip": "toy_rewards:brevity"}}, "'clip' is a built-in reward"),
    ],
)
def test_reward_names_in_params_are_checked(rewards, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.validate({"rewards": rewards})
