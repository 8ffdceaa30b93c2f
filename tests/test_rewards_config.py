"""The rewards section of params.yaml: defaults, validation, what the GRPO stage builds."""

from pathlib import Path

import pytest
import yaml

from ebmrl import config
from ebmrl.config import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_shipped_rewards_section_is_valid_and_the_default():
    section = yaml.safe_load(REPO_PARAMS.read_text())["rewards"]
    rewards = config.validate({"rewards": section}).rewards
    assert rewards == config.RewardsSection()
    assert rewards.answer.batch_size == 64
    assert rewards.clip.max_sentences == 16
    assert (rewards.pcg.batch_size, rewards.pcg.max_block_chars) == (16, 8192)
    assert rewards.pcg.max_sequence_tokens == 16_384
    assert rewards.clip.sentence_rule == "ebmrl"
    assert rewards.pcg.leak_filter.model == "models/tiny/minilm"  # the real all-MiniLM-L6-v2


BAD = [
    ("answer", {"batch_size": 0}, "rewards.answer.batch_size"),
    ("clip", {"max_sentences": 0}, "rewards.clip.max_sentences"),
    ("pcg", {"batch_size": -1}, "rewards.pcg.batch_size"),
    ("pcg", {"max_block_chars": 0}, "rewards.pcg.max_block_chars"),
    ("pcg", {"max_sequence_tokens": 0}, "rewards.pcg.max_sequence_tokens"),
    ("clip", {"sentence_rule": "nltk"}, "rewards.clip.sentence_rule"),
    ("pcg", {"leak_filter": {"model": ""}}, "rewards.pcg.leak_filter.model"),
    (
        "pcg",
        {"batch_sise": 4},
        "rewards.pcg.batch_sise: unknown key (did you mean rewards.pcg.batch_size?)",
    ),
]


@pytest.mark.parametrize(("key", "value", "named"), BAD, ids=[b[2] for b in BAD])
def test_bad_reward_settings_name_the_key(key, value, named):
    with pytest.raises(ConfigError) as info:
        config.validate({"rewards": {key: value}}, source="params.yaml")
    assert named in str(info.value)
