"""The paper profile trains what the authors' released code trains (method.md section 6).

Expected values are the authors' (their launch script EBM_RP_RL.sh, their trainer and
reward servers, RP_COT_SFT.sh), written out here by hand, not read from our code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ebmrl import cli, config
from ebmrl.edge.profiles import apply_profile
from ebmrl.fidelity import fidelity_rows, fidelity_table
from ebmrl.prompts import conversation
from ebmrl.schema import parse_released
from ebmrl.tags import AUTHORS_TAGS, DEFAULT_TAGS
from ebmrl.train.trl_args import common_args, grpo_args, sft_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    apply_profile(tmp_path / "params.yaml", "paper")
    return config.load(tmp_path / "params.yaml")


# ------------------------------------------------------------------- the table
def test_paper_profile_matches_the_authors_on_every_setting(paper):
    rows = fidelity_rows(paper)
    differing = [r.setting for r in rows if not r.matches and not r.fixed]
    assert differing == []
    assert "every setting is the authors'" in fidelity_table(paper)
    # What stays ours on purpose is code, listed, never silent.
    assert {r.setting for r in rows if r.fixed} == {
        "reward constant in a group",
        "clip without CLIP embeddings",
        "prompt wording",
        "judge reply",
        "judge frames under 512 px",
    }


def test_demo_profile_shows_where_it_differs():
    params = config.load(REPO / "params.yaml")
    differing = {r.setting for r in fidelity_rows(params) if not r.matches and not r.fixed}
    # Our deliberate defaults, each a params value the paper profile sets to the authors'.
    assert {
        "tags",
        "rewards.clip.sentence_rule",
        "sft.target_layout",
        "grpo.loss_type",
        "grpo.kl_clamp",
        "grpo.top_k",
        "evaluate.decoding (T, p, tokens)",
        "evaluate.judge (protocol, subset)",
        "videoqa (protocol, frames)",
    } <= differing


def test_paper_profile_evaluates_as_the_authors_ran_it(paper):
    """Their RP inference script, judge script and VideoQA scripts, by hand."""
    e = paper.evaluate
    # inference_all_prompt_res.py: do_sample, temperature 0.7, top_p 0.9, 2,048 new tokens.
    assert (e.decoding.temperature, e.decoding.top_p, e.max_new_tokens) == (0.7, 0.9, 2048)
    # The paper's baselines: the base VLM with their three prompt modes, then SFT, GRPO.
    assert [(s.name, s.model, s.prompt, s.frames) for s in e.systems] == [
        ("base", None, "ebm", True),
        ("base_cot", None, "cot", True),
        ("base_vanilla", None, "vanilla", True),
        ("sft", "models/sft/final", "ebm", True),
        ("grpo", "models/grpo/final", "ebm", True),
    ]
    # Immersive-Video-RP-evaluate.py: 100 random samples, 8 frames at 512, zeros averaged.
    j = e.judge
    assert (j.protocol, j.subset_size(), j.frames, j.frame_max_side) == ("authors", 100, 8, 512)
    assert j.frame_source == "clip"
    # Generalization/*: 32 frames, digit options, exact match, seed 42.
    v = paper.videoqa
    assert (v.protocol, v.frames, v.subset_seed) == ("authors", 32, 42)


def test_check_params_prints_the_table(tmp_path, capsys):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert cli.main(["--params", str(tmp_path / "params.yaml"), "check-params"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "Fidelity to the authors" in out
    assert "grpo.kl_clamp" in out and "<- differs" in out
    assert len(out.splitlines()) <= 60  # one screen


# ------------------------------------------------ the configs the trainers get
def test_paper_grpo_config_field_by_field(paper):
    # Built for the CPU here (bf16 needs a GPU); the GPU flags are checked below.
    models = paper.models.model_copy(update={"device": "cpu"})
    args = grpo_args(paper.grpo, models, "out", [], {"reward_weights": [1.0, 1.0, 0.8, 0.8]})
    expected = {
        # EBM_RP_RL.sh
        "learning_rate": 5e-7,
        "lr_scheduler_type": "cosine",
        "weight_decay": 0.01,
        "max_grad_norm": 5.0,
        "per_device_train_batch_size": 8,  # their batch 1 prompt = our 8 completions
        "gradient_accumulation_steps": 1,
        "num_train_epochs": 1,
        "num_generations": 8,
        "max_completion_length": 1024,
        "beta": 0.04,
        # their GenerationConfig(top_p=0.95, temperature=1): top_k is its default 50
        "temperature": 1.0,
        "top_p": 0.95,
        "top_k": 50,
        # their loss: one pass per batch, per-completion token mean, plain k3 KL
        "loss_type": "grpo",
        "num_iterations": 1,
        "use_bias_correction_kl": False,
        "reward_weights": [1.0, 1.0, 0.8, 0.8],
    }
    for key, value in expected.items():
        got = getattr(args, key)
        got = getattr(got, "value", got)  # enums (lr_scheduler_type) by their value
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
    assert args.warmup_steps == 0  # no warmup in their script
    assert paper.grpo.kl_clamp == 10.0  # VideoGRPOTrainer(kl_clamp=...): their clamp
    gpu = common_args(paper.grpo, paper.models, "out", [])
    assert gpu["bf16"] is True and gpu["use_cpu"] is False


def test_paper_sft_config_field_by_field(paper):
    models = paper.models.model_copy(update={"device": "cpu"})
    args = sft_args(paper.sft, models, "out", [])
    # RP_COT_SFT.sh: lr 3e-6, warmup 0.1, gradient clip 5, 4 epochs, no scheduler given
    # (transformers' linear), effective batch 8.
    assert (args.learning_rate, args.warmup_steps, args.max_grad_norm) == (3e-6, 0.1, 5.0)
    assert (getattr(args.lr_scheduler_type, "value", None), args.num_train_epochs) == ("linear", 4)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 8


# ------------------------------------------------------------ prompts and targets
@pytest.fixture(scope="module")
def cot_samples(rp_sample_dir):
    records = json.loads((rp_sample_dir / "cot_sample.json").read_text(encoding="utf-8"))
    return records, parse_released(records)


def test_released_sft_target_is_process_blank_line_solution(cot_samples):
    records, samples = cot_samples
    for record, sample in zip(records, samples, strict=True):
        # RP_cot_sft.py: f"{process}\n\n{solution}", as written.
        expected = f"{record['process']}\n\n{record['solution']}"
        assert conversation.target_completion(sample, AUTHORS_TAGS, "released") == expected


def test_tagged_sft_target_uses_the_tags_in_use(cot_samples):
    _, samples = cot_samples
    target = conversation.target_completion(samples[0], AUTHORS_TAGS, "tagged")
    assert target.startswith("<vision>") and target.endswith("</answer>")
    assert "<perception>" not in target
    ours = conversation.target_completion(samples[0], DEFAULT_TAGS, "tagged")
    assert ours.startswith("<perception>")


def test_released_target_with_other_tags_is_a_clear_error(cot_samples):
    _, samples = cot_samples
    with pytest.raises(ValueError, match=r"no <perception> and <think> blocks.*tags"):
        conversation.target_completion(samples[0], DEFAULT_TAGS, "released")


def test_reference_is_the_solution_answer_block(cot_samples):
    records, samples = cot_samples
    import re

    for record, sample in zip(records, samples, strict=True):
        match = re.search(r"<answer>(.*?)</answer>", record["solution"], re.DOTALL)
        assert conversation.reference_reply(sample, AUTHORS_TAGS) == match.group(1).strip()


@pytest.mark.parametrize("tags", [DEFAULT_TAGS, AUTHORS_TAGS], ids=["ours", "authors"])
def test_roleplay_prompt_carries_the_authors_rules_in_our_words(cot_samples, tags):
    _, samples = cot_samples
    system = conversation.build_prompt(samples[0], None, tags)[0]["content"][0]["text"]
    p, t, a = tags
    for tag in (p, t, a):
        assert f"<{tag}>" in system and f"</{tag}>" in system
    other = "perception" if p == "vision" else "vision"
    assert f"<{other}>" not in system
    lowered = system.lower()
    # Identity separation: the figures on screen may not be the speakers; one took part.
    assert "not necessarily you" in lowered and "at least one of you" in lowered
    # The two dialogue directions.
    assert "carries on the talk" in lowered and "turns to the event" in lowered
    # The high-stakes personality filter.
    assert "deadly or tragic" in lowered and "courage" in lowered
    # Spoken style: colloquial, one line or two short sentences, no essay tone.
    assert "two short sentences at most" in lowered and "no essay tone" in lowered


def test_evaluation_and_videoqa_read_the_tags_in_use():
    from ebmrl.eval.outputs import SystemOutput, spoken_line
    from ebmrl.eval.videoqa.parsing import answer_region

    text = "<vision>a hall</vision><think>calm</think>So, yes."
    assert spoken_line(text, AUTHORS_TAGS) == "So, yes."
    assert spoken_line(text + "<answer>Yes.</answer>", AUTHORS_TAGS) == "Yes."
    out = SystemOutput("s", text + "<answer>Yes.</answer>", tags=AUTHORS_TAGS)
    assert (out.perception, out.think, out.answer) == ("a hall", "calm", "Yes.")
    assert answer_region(text, AUTHORS_TAGS) == ("So, yes.", False)
