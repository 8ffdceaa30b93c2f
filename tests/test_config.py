from pathlib import Path

import pytest
import yaml

from ebmrl import config
from ebmrl.config import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_shipped_params_are_valid_and_match_paper_method():
    params = config.load(REPO_PARAMS)
    assert params.rewards.weights == {
        "answer": 1.0,
        "format": 1.0,
        "clip": 0.8,
        "pcg": 0.8,
    }
    assert params.rewards.aggregation == "normalize_then_sum"
    assert params.grpo.group_size == 8 and params.grpo.beta == 0.04
    assert [(s.max_duration_s, s.frames) for s in params.video.clip_frame_schedule] == [
        (5, 4),
        (15, 8),
        (60, 16),
        (None, 32),
    ]
    assert params.models.vlm.startswith("models/tiny")


def changed_leaves(a, b, path=""):
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            leaf
            for key in sorted(set(a) | set(b))
            for leaf in changed_leaves(a.get(key), b.get(key), f"{path}{key}.")
        ]
    return [] if a == b else [f"{path[:-1]}: class {a!r}, params.yaml {b!r}"]


def test_class_defaults_are_the_shipped_params_yaml():
    """``Params()`` is params.yaml, not a third profile: a knob missing from a user's file
    takes the shipped value, and the paper recipe lives in profiles/paper.yaml only."""
    defaults = config.Params().model_dump(mode="json")
    shipped = config.load(REPO_PARAMS).model_dump(mode="json")
    assert changed_leaves(defaults, shipped) == []
    assert changed_leaves({"grpo": {"lr": 1}}, {"grpo": {"lr": 2}}) == [
        "grpo.lr: class 1, params.yaml 2"
    ]


def test_the_paper_recipe_is_the_paper_profile():
    from ebmrl.edge import profiles

    base = yaml.safe_load(REPO_PARAMS.read_text())
    overlay = profiles.read_overlay(profiles.profile_path("paper"))
    params = config.validate(profiles.merge(base, overlay))
    assert params.sft.learning_rate == 3e-6 and params.sft.epochs == 4
    assert params.sft.per_device_batch_size * params.sft.gradient_accumulation_steps == 8
    assert params.grpo.learning_rate == 5e-7 and params.grpo.max_completion_length == 1024
    assert params.grpo.temperature == 1.0 and params.grpo.top_p == 0.95


def test_empty_file_gives_defaults(tmp_path):
    assert config.load(write(tmp_path, "")) == config.Params()


def test_params_are_immutable():
    params = config.Params()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        params.grpo.group_size = 3


def _params_with(path: str, value) -> dict:
    data = yaml.safe_load(REPO_PARAMS.read_text())
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


BAD_VALUES = [
    # (key path, bad value, words the message must contain)
    ("rewards.weights.clip", -1.0, ["rewards.weights.clip", "-1.0", "greater than or equal"]),
    ("rewards.weights.answer", "high", ["rewards.weights.answer", "'high'"]),
    ("grpo.group_size", 1, ["grpo.group_size", "1"]),
    ("grpo.top_p", 1.5, ["grpo.top_p", "1.5"]),
    ("grpo.temperature", 0, ["grpo.temperature", "0"]),
    ("grpo.learning_rate", -5e-7, ["grpo.learning_rate"]),
    ("rewards.aggregation", "mean", ["rewards.aggregation", "'mean'"]),
    ("rewards.clip.mode", "avg", ["rewards.clip.mode", "'avg'"]),
    ("rewards.pcg.leak_filter.threshold", 2.0, ["rewards.pcg.leak_filter.threshold", "2.0"]),
    ("sft.warmup_ratio", 1.0, ["sft.warmup_ratio", "1.0"]),
    ("sft.max_steps", 0, ["sft", "max_steps: 0 trains nothing"]),
    ("grpo.per_device_batch_size", 3, ["grpo", "multiple of group_size"]),
    ("models.dtype", "fp8", ["models.dtype", "'fp8'"]),
    ("demo.num_clips", 1, ["demo.num_clips", "1"]),
    ("demo.width", 96, ["demo.width", "multiple of 64"]),
    ("grpo.max_completion_length", 0, ["grpo.max_completion_length"]),
    ("sft.lora.dropout", 1.0, ["sft.lora.dropout"]),
    (
        "video.clip_frame_schedule",
        [{"max_duration_s": 5, "frames": 4}],
        ["video.clip_frame_schedule", "last step"],
    ),
    (
        "video.clip_frame_schedule",
        [
            {"max_duration_s": 15, "frames": 8},
            {"max_duration_s": 5, "frames": 4},
            {"max_duration_s": None, "frames": 32},
        ],
        ["video.clip_frame_schedule", "increase"],
    ),
    ("video.min_frames", 20, ["video", "min_frames (20) > max_frames (8)"]),
    ("video.max_frames", 1, ["video.max_frames"]),
    ("tags", ["vision", "vision", "answer"], ["tags", "must differ"]),
    ("grpo.loss_type", "ppo", ["grpo.loss_type", "'ppo'"]),
    ("grpo.kl_clamp", 0, ["grpo.kl_clamp"]),
    ("sft.target_layout", "raw", ["sft.target_layout", "'raw'"]),
]


@pytest.mark.parametrize(
    ("key", "value", "words"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES]
)
def test_bad_value_names_the_key_and_value(key, value, words):
    with pytest.raises(ConfigError) as info:
        config.validate(_params_with(key, value), source="params.yaml")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in message, message


def test_all_weights_zero_is_rejected():
    data = _params_with("rewards.weights", {"answer": 0, "format": 0, "clip": 0, "pcg": 0})
    with pytest.raises(ConfigError, match=r"rewards\.weights: all reward weights are 0"):
        config.validate(data)


def test_unknown_key_is_named_with_a_suggestion():
    data = _params_with("rewards.weights.clpi", 0.5)
    with pytest.raises(ConfigError) as info:
        config.validate(data)
    assert "rewards.weights.clpi: unknown key (did you mean rewards.weights.clip?)" in str(
        info.value
    )


def test_unknown_section_lists_known_keys():
    with pytest.raises(ConfigError) as info:
        config.validate({"grop": {"group_size": 4}})
    assert "grop: unknown key (did you mean grpo?)" in str(info.value)


def test_every_problem_is_reported_at_once():
    data = _params_with("grpo.group_size", 0)
    data["rewards"]["weights"]["pcg"] = -2
    with pytest.raises(ConfigError) as info:
        config.validate(data)
    assert {"grpo.group_size", "rewards.weights.pcg"} <= {k for k, _ in info.value.problems}


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "grpo:\n  group_size: [8\n  beta: 0.1\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: invalid YAML"):
        config.load(path)


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "rewards:\n  weights:\n    clip: 0.8\n    clip: 0.5\n")
    with pytest.raises(ConfigError, match="duplicate key 'clip'"):
        config.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.yaml")


def test_root_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        config.load(write(tmp_path, "- a\n- b\n"))


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="grpo"):
        config.validate({"grpo": 8})


def test_demo_cross_field_check():
    with pytest.raises(ConfigError, match="demo: .*max_duration_s"):
        config.validate({"demo": {"min_duration_s": 10, "max_duration_s": 5}})
