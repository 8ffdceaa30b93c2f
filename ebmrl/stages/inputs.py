"""Load what the training stages read: the synthesize output and the frame store."""

from __future__ import annotations

from ebmrl.data.dataset import load_dataset_profiles, load_split
from ebmrl.frame_store import ShardedFrameStore
from ebmrl.train.inputs import TrainingInputs


def load_training_inputs(dataset_dir: str, frames_dir: str) -> TrainingInputs:
    """Train/test splits, profiles and frames; clear errors name a missing upstream output."""
    return TrainingInputs(
        train=load_split(dataset_dir, "train"),
        test=load_split(dataset_dir, "test"),
        frames=ShardedFrameStore.open(frames_dir),
        profiles=load_dataset_profiles(dataset_dir),
    )
