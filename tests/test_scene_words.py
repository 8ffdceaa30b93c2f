"""The scene vocabulary: captions in varied words are read back as what they state."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ebmrl import demo
from ebmrl.scene_words import (
    ATTRIBUTES,
    read_statements,
    scene_attributes,
    write_caption,
)

SCENES = st.fixed_dictionaries(
    {
        "background": st.sampled_from(sorted(demo.COLOURS)),
        "lighting": st.sampled_from(demo.LIGHTING),
        "figures": st.integers(1, 3),
        "figure_colour": st.sampled_from(sorted(demo.FIGURE_COLOURS)),
        "motion": st.sampled_from(demo.MOTIONS),
        "danger": st.booleans(),
    }
)


@settings(max_examples=400, deadline=None)
@given(SCENES, st.sets(st.sampled_from(ATTRIBUTES), min_size=1), st.integers(0, 2**32 - 1))
def test_what_a_caption_states_is_read_back_and_nothing_else(attributes, mention, seed):
    caption = write_caption(attributes, np.random.default_rng(seed), mention)
    stated = read_statements(caption)
    for name in ATTRIBUTES:
        expected = {attributes[name]} if name in mention else set()
        assert stated[name] == expected, (caption, name, stated)


def test_the_demo_reference_perceptions_state_every_attribute_right():
    for scene in demo.make_scenes(48, 3, 128, 96, 8, 2.0, 18.0):
        stated = read_statements(demo.perception_text(scene))
        truth = scene_attributes(scene)
        assert all(stated[name] == {truth[name]} for name in ATTRIBUTES), scene


def test_synonyms_conflicts_and_negations():
    stated = read_statements("A lone teal silhouette, motionless, in a shadowy scarlet alley.")
    assert stated == {
        "background": {"red"}, "lighting": {"dim"}, "figures": {1},
        "figure_colour": {"cyan"}, "motion": {"still"}, "danger": set(),
    }  # fmt: skip
    # "orange flames" is no figure colour; "no fire" is not fire.
    assert read_statements("Orange flames flicker.")["figure_colour"] == set()
    assert read_statements("No fire or threat is visible.")["danger"] == {False}
    assert read_statements("Fire! Yet it looks safe.")["danger"] == {True, False}  # conflicting
    assert read_statements("Blue figures in a bright street.")["figure_colour"] == {"blue"}
    assert read_statements("Four people walk.")["figures"] == {4}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_reading_never_fails(text):
    stated = read_statements(text)
    assert set(stated) == set(ATTRIBUTES)
