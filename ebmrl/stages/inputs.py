"""Load what the training stages read: the synthesize output and the frame store."""

from __future__ import annotations

from ebmrl.data.dataset import load_dataset_profiles, load_split
from ebmrl.frame_store import ShardedFrameStore
from ebmrl.train.training_set import TrainingInputs


def load_training_inputs(dataset_dir: str, frames_dir: str) -> TrainingInputs:
    """Train/test splits, profiles and frames; clear errors name a missing upstream output."""
    return TrainingInputs(
        train=load_split(dataset_dir, "train"),
        test=load_split(dataset_dir, "test"),
        frames=ShardedFrameStore.open(frames_dir),
        profiles=load_dataset_profiles(dataset_dir),
    )


def prepare_training_stage(section, models, start_model: str, check_inputs=None):
    """What both training stages do first: threads, inputs, the model to start from.

    ``check_inputs(inputs)`` validates the inputs (raising a named error) before the
    model is loaded or any MLflow run is opened. Returns
    ``(is_main_process, inputs, model, processor)``.
    """
    from accelerate import PartialState

    from ebmrl.models import load_vlm

    if section.torch_threads:
        import torch

        torch.set_num_threads(section.torch_threads)
    inputs = load_training_inputs(section.dataset, section.frames)
    if check_inputs is not None:
        check_inputs(inputs)
    model, processor = load_vlm(
        start_model,
        dtype=models.dtype,
        device=models.device,
        attn_implementation=models.attn_implementation,
    )
    return PartialState().is_main_process, inputs, model, processor
