"""Group-relative advantages: hand-computed values, missing values, invariances."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebmrl.rewards.aggregate import combine, standardise

# Group [1, 2, 3, 4]: mean 2.5, unbiased std sqrt(5/3); z = (r - 2.5) / sqrt(5/3).
S4 = math.sqrt(5 / 3)
Z4 = [(r - 2.5) / S4 for r in (1, 2, 3, 4)]


def approx(values, rel=1e-5, abs=1e-6):  # noqa: A002 - mirrors pytest.approx
    return pytest.approx(values, rel=rel, abs=abs)


def test_single_reward_single_group():
    assert combine({"a": [1, 2, 3, 4]}, {"a": 1.0}, group_size=4) == approx(Z4)


def test_weighted_sum_of_group_z_scores():
    # b is a reversed and rescaled: its z-scores are -Z4, so the sum is (1 - 0.5) * Z4.
    rewards = {"a": [1, 2, 3, 4], "b": [40, 30, 20, 10]}
    out = combine(rewards, {"a": 1.0, "b": 0.5}, group_size=4)
    assert out == approx([0.5 * z for z in Z4])


def test_groups_are_normalised_separately():
    rewards = {"a": [1, 2, 3, 4, 100, 200, 300, 400]}
    assert combine(rewards, {"a": 1.0}, group_size=4) == approx(Z4 + Z4)


def test_constant_reward_contributes_exactly_zero():
    # 0.1 * 8 is not exactly representable: a naive (r - mean) / (std + 1e-6) would give
    # rounding_error / 1e-6 instead of 0.
    rewards = {"a": [1, 2, 3, 4], "c": [0.1] * 4}
    assert combine(rewards, {"a": 1.0, "c": 5.0}, group_size=4) == approx(Z4)
    assert combine({"c": [0.1] * 8}, {"c": 1.0}, group_size=8) == [0.0] * 8


def test_missing_values_are_left_out_of_their_group():
    # Rows 0 and 3 have no b: they get only a's term.
    rewards = {"a": [1, 2, 3, 4], "b": [None, 1, 2, math.nan]}
    out = combine(rewards, {"a": 1.0, "b": 1.0}, group_size=4, eps=0.0)
    # b present in rows 1 and 2 only: mean 1.5, std sqrt(0.5).
    zb = [0.0, -0.5 / math.sqrt(0.5), 0.5 / math.sqrt(0.5), 0.0]
    assert out == approx([za + zb_ for za, zb_ in zip(Z4, zb, strict=True)])


def test_a_single_present_value_contributes_zero():
    rewards = {"a": [1, 2, 3, 4], "b": [7.0, None, None, None]}
    assert combine(rewards, {"a": 1.0, "b": 1.0}, group_size=4) == approx(Z4)


def test_unscorable_rows_get_zero_and_leave_the_statistics():
    rewards = {"a": [None, 1, 2, 3], "b": [None, 0, 0, 0]}
    for mode in ("normalize_then_sum", "sum_then_normalize"):
        out = combine(rewards, {"a": 1.0, "b": 1.0}, group_size=4, mode=mode, eps=0.0)
        assert out == approx([0.0, -1.0, 0.0, 1.0]), mode


def test_sum_then_normalize_hand_computed():
    # weighted sums [1, 2, 3, 8]: mean 3.5, unbiased std sqrt(29/3).
    rewards = {"a": [1, 2, 3, 4], "b": [0, 0, 0, 4]}
    out = combine(rewards, {"a": 1.0, "b": 1.0}, group_size=4, mode="sum_then_normalize")
    expected = [(s - 3.5) / math.sqrt(29 / 3) for s in (1, 2, 3, 8)]
    assert out == approx(expected)


def test_sum_then_normalize_counts_a_missing_value_as_zero_in_the_sum():
    rewards = {"a": [1, 2, 3, 4], "b": [None, 0, 0, 4]}
    out = combine(rewards, {"a": 1.0, "b": 1.0}, group_size=4, mode="sum_then_normalize")
    expected = [(s - 3.5) / math.sqrt(29 / 3) for s in (1, 2, 3, 8)]
    assert out == approx(expected)


def test_batch_normalize_is_a_positive_rescaling_of_the_paper_values():
    rng = np.random.default_rng(0)
    rewards = {k: rng.normal(size=16).tolist() for k in ("a", "b", "c")}
    weights = {"a": 1.0, "b": 0.8, "c": 0.3}
    paper = np.array(combine(rewards, weights, group_size=8, eps=0.0))
    batch = np.array(combine(rewards, weights, group_size=8, eps=0.0, batch_normalize=True))
    assert paper.mean() == pytest.approx(0.0, abs=1e-12)  # each group sums to 0 already
    assert batch == approx(paper / paper.std(ddof=1))


def test_eps_is_added_to_the_std():
    out = combine({"a": [1, 2, 3, 4]}, {"a": 1.0}, group_size=4, eps=1.0)
    assert out == approx([(r - 2.5) / (S4 + 1.0) for r in (1, 2, 3, 4)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rewards": {"a": [1, math.inf]}, "group_size": 2}, "'a' is infinite at row 1"),
        ({"rewards": {"a": [1, 2], "b": [1]}, "group_size": 1}, "different lengths"),
        ({"rewards": {"a": [1, 2, 3]}, "group_size": 2}, "not a whole number of groups"),
        ({"rewards": {"z": [1, 2]}, "group_size": 2}, r"no weight for reward\(s\) \['z'\]"),
        ({"rewards": {"a": [1, 2]}, "group_size": 2, "mode": "mean"}, "unknown aggregation"),
        ({"rewards": {}, "group_size": 2}, "no rewards"),
        (
            {
                "rewards": {"a": [1, 2]},
                "group_size": 2,
                "mode": "sum_then_normalize",
                "batch_normalize": True,
            },
            "normalize_then_sum only",
        ),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    kwargs.setdefault("weights", {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match=message):
        combine(**kwargs)


finite = st.floats(-1e3, 1e3, allow_nan=False)
# Whole numbers: distinct values stay distinct after any rescaling below.
whole = st.integers(-1000, 1000).map(float)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(whole, min_size=8, max_size=8),
    st.lists(whole, min_size=8, max_size=8),
    st.floats(0.01, 100),
    st.floats(-100, 100),
)
def test_normalize_then_sum_ignores_each_rewards_scale_and_offset(a, b, scale, offset):
    weights = {"a": 1.0, "b": 0.8}
    base = combine({"a": a, "b": b}, weights, group_size=4, eps=0.0)
    moved = combine({"a": a, "b": [scale * x + offset for x in b]}, weights, group_size=4, eps=0.0)
    assert moved == approx(base, rel=1e-6, abs=1e-6)
    for g in (0, 4):
        assert sum(base[g : g + 4]) == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(finite, st.none(), st.just(math.nan)), min_size=6, max_size=6))
def test_every_advantage_is_finite(values):
    for mode in ("normalize_then_sum", "sum_then_normalize"):
        out = combine({"a": values, "b": values[::-1]}, {"a": 1, "b": 2}, 3, mode=mode)
        assert all(math.isfinite(x) for x in out)


def test_standardise_keeps_missing_as_missing():
    out = standardise(np.array([1.0, math.nan, 3.0]), eps=0.0)
    assert out[0] == pytest.approx(-1 / math.sqrt(2)) and math.isnan(out[1])
