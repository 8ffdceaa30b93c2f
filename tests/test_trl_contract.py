"""The upgrade guard: an overridden TRL method whose signature changed stops the trainer
before any step, with a diagnosis naming the method."""

import pytest
from trl import GRPOTrainer, SFTTrainer

from ebmrl.train.resume import ResumeWithConvertedKeys
from ebmrl.train.trl_contract import (
    OVERRIDDEN,
    TrlContractError,
    check_overrides,
    overridden_methods,
)
from ebmrl.train.video_grpo import VideoGRPOTrainer


def test_the_pinned_trl_matches_every_recorded_override():
    check_overrides(VideoGRPOTrainer, GRPOTrainer)

    class VideoSFTTrainer(ResumeWithConvertedKeys, SFTTrainer):
        pass

    check_overrides(VideoSFTTrainer, SFTTrainer)
    assert overridden_methods(VideoSFTTrainer, SFTTrainer) == ["_load_from_checkpoint"]


def test_every_override_of_the_video_trainer_is_recorded():
    # The GRPO subclass's overrides of TRL methods, found from the classes themselves.
    found = overridden_methods(VideoGRPOTrainer, GRPOTrainer)
    assert "_compute_loss" in found and "_tokenize_prompts" in found
    assert set(found) <= set(OVERRIDDEN)


def test_a_changed_parameter_list_is_named():
    class UpgradedTRL(GRPOTrainer):
        def _compute_loss(self, model, inputs, num_items_in_batch):  # a new parameter
            raise AssertionError("never called")

    with pytest.raises(TrlContractError) as caught:
        check_overrides(VideoGRPOTrainer, UpgradedTRL)
    message = str(caught.value)
    assert (
        "UpgradedTRL._compute_loss takes ('self', 'model', 'inputs', 'num_items_in_batch')"
        in message
    )
    assert "1.16.0" in message
    assert "_tokenize_prompts" not in message  # only what changed


def test_a_removed_method_is_named():
    # A TRL whose trainer no longer has _tokenize_prompts: our override would never run.
    upgraded = type(
        "UpgradedTRL",
        (),
        {name: getattr(GRPOTrainer, name) for name in OVERRIDDEN if name != "_tokenize_prompts"},
    )
    with pytest.raises(TrlContractError, match="has no method _tokenize_prompts any more"):
        check_overrides(VideoGRPOTrainer, upgraded)


def test_an_unrecorded_override_is_an_error():
    class Ours(VideoGRPOTrainer):
        def log(self, logs, start_time=None):
            return super().log(logs, start_time)

    Ours.__module__ = "ebmrl.train.example"
    with pytest.raises(
        TrlContractError, match="Ours.log overrides GRPOTrainer.log.*does not record"
    ):
        check_overrides(Ours, GRPOTrainer)
