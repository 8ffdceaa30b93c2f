"""The final model of a training stage: one ``from_pretrained``-loadable folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ebmrl.io import atomic_path


def save_final_model(model: Any, processor: Any, final_dir: str | Path, is_main_process: bool):
    """Write ``model`` (LoRA adapters merged into a plain model) and its processor to
    ``final_dir`` atomically, on the main process only; returns the model saved (the
    merged one on the main process, ``model`` as given elsewhere)."""
    if not is_main_process:
        return model
    if hasattr(model, "merge_and_unload"):  # LoRA: ship a plain model, merged once
        model = model.merge_and_unload()
    with atomic_path(final_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return model
