"""The evaluate and videoqa sections of params.yaml: validated, errors name the key."""

import pytest

from ebmrl.config import ConfigError, load, validate


def problems(data):
    with pytest.raises(ConfigError) as info:
        validate(data)
    return dict(info.value.problems)


def test_the_shipped_params_validate_and_share_the_systems():
    params = load("params.yaml")
    names = [s.name for s in params.evaluate.systems]
    assert names == ["base", "sft", "grpo"] == [s.name for s in params.videoqa.systems]
    assert params.evaluate.judge.metrics == ["veg", "spc", "cn"]
    assert {b.format for b in params.videoqa.benchmarks} == {"activitynet_qa", "nextqa", "pororoqa"}


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"evaluate": {"systems": [{"name": "a"}, {"name": "a"}]}}, "evaluate.systems", "unique"),
        ({"evaluate": {"systems": [{"name": "a b"}]}}, "evaluate.systems[0].name", "pattern"),
        (
            {"evaluate": {"systems": [{"name": "x", "base_url": "ftp://h"}]}},
            "evaluate.systems[0].base_url",
            "http",
        ),
        (
            {"evaluate": {"judge": {"pairwise": {"enabled": True, "pairs": [["grpo", "nope"]]}}}},
            "evaluate",
            "'nope'",
        ),
        (
            {"evaluate": {"judge": {"pairwise": {"pairs": [["sft", "sft"]]}}}},
            "evaluate.judge.pairwise.pairs",
            "two different",
        ),
        ({"evaluate": {"judge": {"metrics": ["veg", "veg"]}}}, "evaluate.judge.metrics", "repeat"),
        ({"evaluate": {"judge": {"metrics": ["fun"]}}}, "evaluate.judge.metrics[0]", "'veg'"),
        ({"evaluate": {"judge": {"max_attempts": 0}}}, "evaluate.judge.max_attempts", "greater"),
        (
            {
                "evaluate": {
                    "judge": {
                        "serve_local": True,
                        "backend": {"kind": "http", "base_url": "http://h/v1"},
                    }
                }
            },
            "evaluate.judge",
            "serve_local",
        ),
        ({"evaluate": {"judge": {"temperature": 0}}}, "evaluate.judge.temperature", "unknown key"),
        (
            {
                "videoqa": {
                    "benchmarks": [
                        {
                            "name": "n",
                            "format": "nextqa",
                            "annotations": "a",
                            "videos": "v",
                            "answers": "x",
                        }
                    ]
                }
            },
            "videoqa.benchmarks[0]",
            "only for it",
        ),
        (
            {
                "videoqa": {
                    "benchmarks": [
                        {"name": "n", "format": "tgif", "annotations": "a", "videos": "v"}
                    ]
                }
            },
            "videoqa.benchmarks[0].format",
            "activitynet_qa",
        ),
    ],
)
def test_bad_values_name_the_key(data, key, message):
    found = problems(data)
    assert key in found, found
    assert message in found[key]
