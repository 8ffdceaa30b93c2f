"""Parameter profiles: the paper-scale and CI profiles validate, select with one command,
keep params.yaml's comments, and reach the same stage code as the demo profile."""

import shutil
from pathlib import Path

import pytest
import yaml

from ebmrl import cli
from ebmrl.config import ConfigError, load
from ebmrl.edge.profiles import apply_profile, changed_keys, merge, read_overlay

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


@pytest.fixture
def params_copy(tmp_path) -> Path:
    """params.yaml and profiles/ copied side by side (profiles are found beside it)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    return tmp_path / "params.yaml"


def test_the_paper_and_ci_profiles_ship():
    assert {p.stem for p in PROFILES} >= {"paper", "ci"}


@pytest.mark.parametrize("profile", [p.stem for p in PROFILES])
def test_every_profile_validates_through_check_params(params_copy, profile, capsys):
    assert cli.main(["--params", str(params_copy), "use-profile", profile]) == 0
    assert cli.main(["--params", str(params_copy), "check-params"]) == 0
    assert "OK" in capsys.readouterr().out


def test_paper_profile_is_the_papers_recipe(params_copy):
    apply_profile(params_copy, "paper")
    p = load(params_copy)
    assert p.models.vlm == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (p.models.clip, p.models.clip_pretrained) == ("ViT-L-14", "openai")
    assert (p.models.text_encoder, p.models.text_encoder_layers) == (
        "microsoft/deberta-xlarge-mnli",
        40,
    )
    assert (p.models.dtype, p.models.device) == ("bfloat16", "cuda")
    # The released training script uses no leak filter (their variant: MiniLM, 0.4).
    assert not p.rewards.pcg.leak_filter.enabled
    assert p.rewards.pcg.leak_filter.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert p.rewards.pcg.leak_filter.threshold == 0.4
    assert p.tags == ("vision", "think", "answer")
    # CoT-SFT: lr 3e-6, warmup 10 %, effective batch 8 (on one GPU), 4 epochs.
    assert (p.sft.learning_rate, p.sft.warmup_ratio, p.sft.epochs) == (3e-6, 0.1, 4)
    assert p.sft.per_device_batch_size * p.sft.gradient_accumulation_steps == 8
    # GRPO: G = 8, T 1.0, top-p 0.95, lr 5e-7 cosine, beta 0.04, 1,024 tokens, 1 epoch.
    g = p.grpo
    assert (g.group_size, g.temperature, g.top_p) == (8, 1.0, 0.95)
    assert (g.learning_rate, g.lr_scheduler, g.beta) == (5e-7, "cosine", 0.04)
    assert (g.max_completion_length, g.epochs, g.max_steps) == (1024, 1, -1)
    # Policy frames: about 2 fps, 4 to 16 per clip, about 100k pixels each.
    assert (p.video.fps, p.video.min_frames, p.video.max_frames) == (2.0, 4, 16)
    assert 90_000 <= p.video.max_pixels_per_frame <= 110_000
    # CLIP frames: 4 / 8 / 16 / 32 by duration.
    assert p.video.clip_schedule() == ((5, 4), (15, 8), (60, 16), (None, 32))


def test_applying_keeps_comments_order_and_is_idempotent(params_copy):
    before = params_copy.read_text()
    changed = apply_profile(params_copy, "paper")
    after = params_copy.read_text()
    assert "models.vlm" in changed and "grpo.learning_rate" in changed
    # Every comment line of the file survives, in order, and the sections keep their order.
    kept = iter(line.strip() for line in after.splitlines() if line.lstrip().startswith("#"))
    for line in before.splitlines():
        if line.lstrip().startswith("#"):
            assert line.strip() in kept, f"comment lost or moved: {line.strip()!r}"
    top = [line.split(":")[0] for line in before.splitlines() if line[:1].isalpha()]
    assert top == [line.split(":")[0] for line in after.splitlines() if line[:1].isalpha()]
    # Keys the profile does not name keep their values.
    untouched = yaml.safe_load(before)["tiny_models"]
    assert yaml.safe_load(after)["tiny_models"] == untouched
    assert apply_profile(params_copy, "paper") == []
    assert params_copy.read_text() == after


def test_profile_values_are_what_the_file_then_holds(params_copy):
    overlay = read_overlay(REPO / "profiles" / "paper.yaml")
    base = yaml.safe_load(params_copy.read_text())
    apply_profile(params_copy, "paper")
    assert yaml.safe_load(params_copy.read_text()) == merge(base, overlay)


def test_a_bad_profile_changes_nothing_and_names_the_key(params_copy, capsys):
    before = params_copy.read_text()
    bad = params_copy.parent / "bad.yaml"
    bad.write_text("grpo:\n  lerning_rate: 1.0e-6\nrewards:\n  weights: {clip: -1}\n")
    assert cli.main(["--params", str(params_copy), "use-profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "grpo.lerning_rate" in err and "did you mean grpo.learning_rate" in err
    assert "rewards.weights.clip" in err
    assert params_copy.read_text() == before


def test_an_unknown_profile_name_lists_the_known_ones(params_copy):
    with pytest.raises(ConfigError, match="known in .*ci, paper"):
        apply_profile(params_copy, "papr")


def test_changed_keys_reports_only_real_changes():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 2}
    assert changed_keys(base, {"a": {"b": 1, "c": [1, 3]}, "d": 2}) == ["a.c"]


def test_paper_profile_reaches_the_same_code_as_the_demo(params_copy):
    """The stages read params.yaml only: under the paper profile the same functions build
    the trainer arguments (now bf16 on the GPU) and load models by hub id."""
    from ebmrl.models.loading import ModelLoadError, is_local, load_vlm
    from ebmrl.train.trl_args import common_args

    demo = load(params_copy)
    apply_profile(params_copy, "paper")
    paper = load(params_copy)
    demo_args = common_args(demo.grpo, demo.models, "out", [])
    paper_args = common_args(paper.grpo, paper.models, "out", [])
    assert demo_args.keys() == paper_args.keys()
    assert (demo_args["use_cpu"], demo_args["bf16"]) == (True, False)
    assert (paper_args["use_cpu"], paper_args["bf16"]) == (False, True)
    assert paper_args["learning_rate"] == 5e-7
    assert not is_local(paper.models.vlm)
    # No hub here: the loader tries the hub id and says so (users get the real model).
    with pytest.raises(ModelLoadError, match="Qwen/Qwen2.5-VL-7B-Instruct.*hub"):
        load_vlm(paper.models.vlm)


def test_every_params_key_is_read_by_some_stage():
    """A key no stage lists in dvc.yaml would change nothing when a profile sets it."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    # (check_params depends on the whole file to validate it; it computes nothing.)
    listed = {key for stage in stages.values() for key in stage.get("params", [])}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # Where logs and checkpoint copies go is deliberately not a dependency: it must not
    # rerun a stage.
    not_stage_inputs = {"tracking", "checkpoints"}

    def leaves(data, prefix=""):
        for key, value in data.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and path not in listed:
                yield from leaves(value, f"{path}.")
            else:
                yield path

    unread = [
        key
        for key in leaves(params)
        if key.split(".")[0] not in not_stage_inputs
        and not any(key == p or key.startswith(f"{p}.") for p in listed)
    ]
    assert not unread, f"params no dvc.yaml stage lists: {unread}"


@pytest.mark.parametrize("path", [REPO / "params.yaml", *PROFILES], ids=lambda p: p.name)
def test_no_yaml_aliases_since_dvc_exp_run_set_param_breaks_them(path):
    """`dvc exp run -S key=value` rewrites params.yaml and turns `*alias` into an invalid
    empty sequence: write repeated values out."""
    events = yaml.parse(path.read_text())
    aliases = [e for e in events if isinstance(e, yaml.AliasEvent)]
    assert not aliases, f"{path.name}: YAML alias(es) {[a.anchor for a in aliases]}"


def changed_lines(before: str, after: str) -> list[str]:
    import difflib

    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


@pytest.mark.parametrize("profile", [None, *(p.stem for p in PROFILES)])
@pytest.mark.parametrize(
    "override",
    [
        "rewards.weights.clip=0.5",  # a nested number
        "grpo.lora.target_modules=[q_proj,k_proj]",  # a list: only its changed item
        "evaluate.systems.0.model=models/other",  # an item of a list of mappings
        "sft.max_length=512",  # a null
    ],
)
def test_dvc_exp_run_set_param_changes_one_line(params_copy, profile, override):
    """params.yaml (and what `ebmrl use-profile` writes into it) is in the layout DVC
    writes back: `dvc exp run -S key=value` (DVC's own writer, as the CLI calls it)
    changes one line, not the whole file (tests/test_dag.py runs the real command)."""
    from dvc.utils.hydra import apply_overrides

    if profile:
        apply_profile(params_copy, profile)
    before = params_copy.read_text()
    apply_overrides(str(params_copy), [override])
    changed = changed_lines(before, params_copy.read_text())
    assert len(changed) == 2, "\n".join(changed)  # one line out, one line in
    assert load(params_copy)  # still valid


def test_a_flow_list_in_a_profile_is_written_in_the_block_layout(params_copy):
    """`records: [s3://...]` over params.yaml's block list (the e2e test's S3 source): a
    valid file in DVC's layout, the key's comment kept, nothing else moved."""
    overlay = params_copy.parent / "s3.yaml"
    overlay.write_text(
        "ingest:\n  source: s3://bucket/videos\n  records: [s3://bucket/samples.json]\n"
    )
    before = params_copy.read_text()
    assert apply_profile(params_copy, overlay) == ["ingest.source", "ingest.records"]
    after = params_copy.read_text()
    assert load(params_copy).ingest.records == ["s3://bucket/samples.json"]
    assert "  - s3://bucket/samples.json\n" in after and "[s3://" not in after
    assert "records:                             # released-format files" in after
    assert len(changed_lines(before, after)) == 4  # source and the one record: out, in
