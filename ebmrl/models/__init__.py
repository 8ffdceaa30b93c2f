"""Model loading by hub id or local folder (the same path for real and tiny models)."""

from ebmrl.models.loading import (
    ModelLoadError,
    load_clip,
    load_text_encoder_spec,
    load_vlm,
)

__all__ = ["ModelLoadError", "load_clip", "load_text_encoder_spec", "load_vlm"]
