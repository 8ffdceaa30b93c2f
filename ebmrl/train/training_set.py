"""What a training stage works on, however it was loaded (disk, S3, or built in a test)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ebmrl.frame_store import FrameStore
from ebmrl.schema import ProfileBook, Sample


class EmptyTrainingSet(ValueError):
    """Nothing to train on; the message says which split and why."""


@dataclass
class TrainingInputs:
    train: list[Sample]
    test: list[Sample]
    frames: FrameStore
    profiles: ProfileBook = field(default_factory=ProfileBook)
