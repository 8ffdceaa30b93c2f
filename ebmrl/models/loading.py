"""Load models by hub id (users) or by local folder (tiny models, fine-tuned checkpoints).

One function per kind of model, the same code path whatever the source: a local folder
is loaded from disk, anything else is treated as a hub id. Failures raise
``ModelLoadError`` naming the model and, for hub ids on an offline machine, saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class ModelLoadError(RuntimeError):
    """A model id or folder could not be loaded; the message says which and why."""


def is_local(id_or_path: str | Path) -> bool:
    return Path(id_or_path).expanduser().is_dir()


def _hint(id_or_path: str) -> str:
    if is_local(id_or_path):
        return ""
    first = Path(id_or_path).parts[0] if Path(id_or_path).parts else ""
    if id_or_path.startswith((".", "/", "~")) or Path(first).is_dir():
        return " (no such local folder: did the tiny_models stage run?)"
    return " (not a local folder, so it was fetched from the hub: is the hub reachable?)"


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, _DTYPES[name])
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def load_vlm(
    id_or_path: str | Path,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[Any, Any]:
    """Return ``(model, processor)`` for a vision-language model such as Qwen2.5-VL."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = str(id_or_path)
    try:
        processor = AutoProcessor.from_pretrained(name)
        model = AutoModelForImageTextToText.from_pretrained(
            name, dtype=torch_dtype(dtype), attn_implementation=attn_implementation
        )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load VLM {name!r}{_hint(name)}: {exc}") from exc
    return model.to(device), processor


def load_clip(
    id_or_path: str | Path, *, pretrained: str | None = None, device: str = "cpu"
) -> tuple[Any, Any, Any]:
    """Return ``(model, preprocess, tokenizer)`` from open_clip.

    A folder in open_clip's ``local-dir`` layout (``open_clip_config.json`` + weights) is
    loaded from disk; otherwise ``id_or_path`` is an open_clip architecture name (e.g.
    ``ViT-L-14``) with ``pretrained`` naming its weights (e.g. ``openai``), or an
    ``hf-hub:`` id.
    """
    import open_clip

    name = str(id_or_path)
    spec = f"local-dir:{Path(name).expanduser()}" if is_local(name) else name
    try:
        kwargs = {} if is_local(name) or name.startswith("hf-hub:") else {"pretrained": pretrained}
        model, _, preprocess = open_clip.create_model_and_transforms(spec, device=device, **kwargs)
        tokenizer = open_clip.get_tokenizer(spec)
    except Exception as exc:
        raise ModelLoadError(f"cannot load CLIP {name!r}{_hint(name)}: {exc}") from exc
    return model.eval(), preprocess, tokenizer


def load_text_encoder_spec(id_or_path: str | Path, num_layers: int) -> dict[str, Any]:
    """Arguments for ``bert_score.BERTScorer`` for a hub id or a local folder.

    bert-score only knows layer counts for its own list of hub models; for anything else
    (including every local folder) the layer must be given, so we always pass it.
    """
    name = str(id_or_path)
    if (
        not is_local(name)
        and "/" not in name
        and not name.startswith(("bert", "roberta", "microsoft"))
    ):
        raise ModelLoadError(f"text encoder {name!r}{_hint(name)}")
    return {"model_type": name, "num_layers": int(num_layers)}
