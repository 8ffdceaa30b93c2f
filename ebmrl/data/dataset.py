"""The training set written by synthesize, as the trainers read it.

A dataset folder holds ``train.jsonl`` and ``test.jsonl`` (rows in our ``Sample``
schema, loadable with ``datasets.load_dataset("json", data_files=...)``), the character
profiles (``profiles.json``, released format) and ``report.json``. ``clip_id`` of every
sample names its entry in the frame store.
"""

from __future__ import annotations

from pathlib import Path

from ebmrl.data.jsonl import read_samples, write_samples
from ebmrl.schema import ProfileBook, Sample, dump_profiles, dump_released, load_profiles

SPLITS = ("train", "test")
PROFILES_NAME = "profiles.json"


def split_path(folder: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(folder) / f"{split}.jsonl"


def load_split(folder: str | Path, split: str) -> list[Sample]:
    """Samples of one split (``train`` or ``test``)."""
    path = split_path(folder, split)
    if not path.is_file():
        raise FileNotFoundError(f"no {split} split at {path} (did the synthesize stage run?)")
    return read_samples(path)


def load_dataset_profiles(folder: str | Path) -> ProfileBook:
    path = Path(folder) / PROFILES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no character profiles at {path} (did the synthesize stage run?)")
    return load_profiles(path)


def write_dataset(
    folder: str | Path, splits: dict[str, list[Sample]], profiles: ProfileBook
) -> None:
    folder = Path(folder)
    for split in SPLITS:
        write_samples(split_path(folder, split), splits.get(split, []))
    dump_profiles(profiles, folder / PROFILES_NAME)


def export_released(folder: str | Path, out: str | Path) -> dict[str, Path]:
    """Write each split in the public release's format (``<out>/<split>.json``)."""
    out = Path(out)
    written = {}
    for split in SPLITS:
        dump_released(load_split(folder, split), out / f"{split}.json")
        written[split] = out / f"{split}.json"
    return written
