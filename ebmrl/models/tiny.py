"""Tiny, seeded, offline models with the real architectures, for tests and the demo.

No model hub is reachable here, so the demo and the tests build small random-weight
models from configs and save them to folders; everything downstream then loads them by
path through ``ebmrl.models.load_*``, the same functions that load hub ids for users.

- ``build_qwen2_5_vl``: Qwen2.5-VL (vision tower + M-RoPE text model) with a byte-level
  BPE tokenizer trained on our own text, Qwen's special tokens, a chat template that
  marks assistant turns for loss masking, and a real ``Qwen2_5_VLProcessor``.
- ``build_clip``: an open_clip ViT/text-transformer CLIP with a custom tiny config.
- ``build_text_encoder``: a small BERT (own WordPiece vocabulary) usable by bert-score.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ebmrl.io import atomic_path

# Qwen's special tokens, in Qwen's order (ids follow the trained vocabulary).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Our own chat template (Jinja): system/user/assistant turns in Qwen's ChatML layout,
# video and image blocks as <|vision_start|><|video_pad|><|vision_end|>, and
# {% generation %} around assistant text so trainers can mask the loss to it.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{%- else -%}{{- message['content'] + '<|im_end|>' -}}{%- endif -%}"
    "{%- else -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}"
    "{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'text' -%}{{- block['text'] -}}{%- endif -%}"
    "{%- endfor -%}{{- '<|im_end|>' -}}{% endgeneration %}"
    "{%- else -%}"
    "{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'video' -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif block['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif block['type'] == 'text' -%}{{- block['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{{- '<|im_end|>' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


CORPUS_FILE = "tiny_corpus.json"


@functools.cache  # read once: the long-context caption phase draws lines at every step
def _corpus() -> dict:
    return json.loads(Path(__file__).with_name(CORPUS_FILE).read_text(encoding="utf-8"))


def corpus_lines() -> list[str]:
    """The frozen corpus's lines: prompt templates, character sheets, dialogue lines."""
    return list(_corpus()["lines"])


def tokenizer_corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: ``tiny_corpus.json`` beside this module.

    A frozen file (our prompts, demo lines and tags as they were written down), not the
    live prompt templates: rewording a prompt reruns the stages that use the prompt, not
    ``tiny_models`` and everything under it.
    """
    corpus = _corpus()
    # Repetition makes the tags, the prompt wording and common words single tokens.
    return (
        corpus["lines"] * 3
        + [corpus["formatted"]] * 20
        + [f"{i} {i * 7} {i * 13}" for i in range(200)]
    )


def train_bpe_tokenizer(vocab_size: int = 2048):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_qwen2_5_vl(out: str | Path, seed: int = 0, vocab_size: int = 2048) -> Path:
    """Save a tiny Qwen2.5-VL (model, tokenizer, processor) to ``out``; return ``out``."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out)
    tokenizer = train_bpe_tokenizer(vocab_size)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}
    hidden, heads = 64, 4
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                # Temporal/height/width split of the rotary half-dimension (16/2 = 8).
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    # Small frames keep the demo fast: at most 4x4 merged patches per frame.
    pixel_limits = {"min_pixels": 28 * 28, "max_pixels": 112 * 112}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixel_limits),
        video_processor=Qwen2VLVideoProcessor(
            **pixel_limits, do_sample_frames=False, cap_pixels_per_frame=True
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "EBMRL_TINY.json").write_text(
            json.dumps({"kind": "qwen2_5_vl", "seed": seed, "random_weights": True}) + "\n"
        )
    return out


# ------------------------------------------------------------------------------ CLIP
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 2,
    },
}


def build_clip(out: str | Path, seed: int = 0) -> Path:
    """Save a tiny open_clip CLIP to ``out`` in open_clip's ``local-dir:`` layout."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}, indent=2) + "\n"
        )
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "open_clip_model.safetensors"))
        (tmp / "EBMRL_TINY.json").write_text(
            json.dumps({"kind": "open_clip", "seed": seed, "random_weights": True}) + "\n"
        )
    return out


# ---------------------------------------------------------------------- text encoder
def wordpiece_vocab(corpus: list[str], specials: list[str]) -> dict[str, int]:
    """A word-level WordPiece vocabulary: every corpus word, every character, sorted.

    Built directly rather than with ``WordPieceTrainer``, whose merges break frequency
    ties in hash order: its vocabulary differs from run to run, and so would every DVC
    stage downstream of ``tiny_models``. Unseen words fall back to character pieces.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: set[str] = set()
    for text in corpus:
        words.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    tokens = [*specials, *chars, *(f"##{c}" for c in chars)]
    tokens += sorted(words - set(chars))
    return {token: i for i, token in enumerate(tokens)}


def build_text_encoder(out: str | Path, seed: int = 0) -> Path:
    """Save a tiny BERT with its own WordPiece vocabulary (a bert-score backbone)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = Path(out)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = wordpiece_vocab(tokenizer_corpus(), specials)
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece()
    from tokenizers.processors import TemplateProcessing

    cls_id, sep_id = core.token_to_id("[CLS]"), core.token_to_id("[SEP]")
    core.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "EBMRL_TINY.json").write_text(
            json.dumps({"kind": "bert", "seed": seed, "random_weights": True, "num_layers": 2})
            + "\n"
        )
    return out


def build_all(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Build every tiny model under ``out`` (qwen2_5_vl/, clip/, text_encoder/)."""
    out = Path(out)
    return {
        "vlm": build_qwen2_5_vl(out / "qwen2_5_vl", seed=seed),
        "clip": build_clip(out / "clip", seed=seed),
        "text_encoder": build_text_encoder(out / "text_encoder", seed=seed),
    }
