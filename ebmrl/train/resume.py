"""Resume loads a checkpoint's weights the way ``from_pretrained`` does.

transformers 5.24's ``Trainer`` resumes a plain (non-PEFT, non-FSDP, non-DeepSpeed) model
with ``model.load_state_dict(load_file("model.safetensors"), strict=False)``. For models
whose saved key names differ from their module names (Qwen2.5-VL saves ``visual.*`` and
``model.layers.*``, its modules are ``model.visual.*`` and ``model.language_model.*``),
no key matches, nothing is loaded and only a warning is printed: the run carries on from
the start model's weights with the checkpoint's step count and optimizer state. We load
through ``from_pretrained`` (which applies the model's key conversion) and require every
weight to land.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


class CheckpointWeightsError(RuntimeError):
    """A checkpoint's weights do not fit the model being trained."""


def has_full_weights(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in FULL_WEIGHTS)


def load_checkpoint_weights(model: Any, folder: str | Path) -> None:
    """Copy a ``save_pretrained`` folder's weights into ``model``, every key or an error."""
    import torch

    dtype = next(model.parameters()).dtype
    saved = type(model).from_pretrained(str(folder), dtype=dtype, device_map="cpu")
    result = model.load_state_dict(saved.state_dict(), strict=False)
    problems = [*result.missing_keys, *result.unexpected_keys]
    if problems:
        raise CheckpointWeightsError(
            f"{folder}: {len(problems)} weight(s) do not match the model, e.g. {problems[:3]}"
        )
    del saved
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ResumeWithConvertedKeys:
    """Trainer mixin (put it before the trainer class): the fixed resume for plain models."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from peft import PeftModel

        target = self.model if model is None else model
        plain = not isinstance(target, PeftModel) and not getattr(self, "is_fsdp_enabled", False)
        if plain and has_full_weights(resume_from_checkpoint):
            load_checkpoint_weights(target, resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
