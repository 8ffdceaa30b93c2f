import json

import pytest
import torch

from ebmrl import video
from ebmrl.models import ModelLoadError, load_clip, load_text_encoder_spec, load_vlm
from ebmrl.models.tiny import QWEN_SPECIAL_TOKENS
from ebmrl.models.vlm import encode, generate_text, video_messages, vision_pad_token_ids


@pytest.fixture(scope="module")
def vlm(tiny_models):
    return load_vlm(tiny_models["vlm"])


def test_tiny_vlm_loads_by_path_with_real_architecture(vlm, tiny_models):
    model, processor = vlm
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    vocab = processor.tokenizer.get_vocab()
    assert all(tok in vocab for tok in QWEN_SPECIAL_TOKENS)
    assert json.loads((tiny_models["vlm"] / "EBMRL_TINY.json").read_text())["random_weights"]


def test_tokenizer_round_trips_our_tags(vlm):
    tokenizer = vlm[1].tokenizer
    text = "<perception>Two figures</perception><think>safe</think><answer>Hi ¡ñ!</answer>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template_marks_video_and_assistant(vlm):
    processor = vlm[1]
    messages = video_messages("What happens?", system="Play Mira.")
    messages.append(
        {"role": "assistant", "content": [{"type": "text", "text": "<answer>Run</answer>"}]}
    )
    out = processor.tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = processor.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert masked == "<answer>Run</answer><|im_end|>"
    text = processor.apply_chat_template(messages, tokenize=False)
    assert "<|vision_start|><|video_pad|><|vision_end|>What happens?" in text


def test_generates_from_a_clip_decoded_by_ebmrl_video(vlm, demo_data):
    model, processor = vlm
    path = sorted(demo_data["videos"].glob("*.mp4"))[0]
    frames, _, _ = video.sample_frames(path)
    inputs = encode(processor, [video_messages("Describe the clip.")], [frames])
    # Real video features, not images.
    assert "pixel_values_videos" in inputs and "video_grid_thw" in inputs
    assert "pixel_values" not in inputs
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert t == len(frames) // 2  # temporal patch of 2 frames
    n_video_tokens = (inputs["input_ids"] == model.config.video_token_id).sum().item()
    assert n_video_tokens == t * h * w // 4  # 2x2 spatial merge
    texts = generate_text(
        model, processor, [video_messages("Describe the clip.")], [frames], max_new_tokens=12
    )
    assert len(texts) == 1 and isinstance(texts[0], str)


def test_video_content_changes_the_logits(vlm, demo_data):
    model, processor = vlm
    clips = sorted(demo_data["videos"].glob("*.mp4"))[:2]
    frames = [video.sample_frames(p, count=4)[0] for p in clips]
    conv = [video_messages("What do you see?")] * 2
    with torch.no_grad():
        logits = model(**encode(processor, conv, frames)).logits[:, -1]
    assert not torch.allclose(logits[0], logits[1])


def test_vision_pad_tokens_are_suppressed(vlm):
    model, processor = vlm
    ids = vision_pad_token_ids(processor)
    assert model.config.video_token_id in ids and model.config.image_token_id in ids


def test_tiny_clip_encodes_text_and_frames(tiny_models, demo_data):
    from PIL import Image

    model, preprocess, tokenizer = load_clip(tiny_models["clip"])
    frames, _, _ = video.sample_frames(next(demo_data["videos"].glob("*.mp4")), count=2)
    images = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
    with torch.no_grad():
        image_emb = model.encode_image(images)
        text_emb = model.encode_text(tokenizer(["a dim street", "two figures"]))
    assert image_emb.shape == (2, 32) and text_emb.shape == (2, 32)
    assert tokenizer(["x"]).shape[-1] == 77  # CLIP's text context length


def test_tiny_text_encoder_works_with_bert_score(tiny_models):
    from bert_score import BERTScorer

    scorer = BERTScorer(**load_text_encoder_spec(tiny_models["text_encoder"], num_layers=2))
    _, _, f1 = scorer.score(["Fire on the ground, get back."], ["Fire on the ground, get back."])
    assert f1.item() == pytest.approx(1.0, abs=1e-5)
    _, _, f1 = scorer.score(["Fire on the ground"], ["Quiet blue street"])
    assert f1.item() < 0.999


def test_builds_are_deterministic(tmp_path):
    from ebmrl.models import tiny

    a = tiny.build_clip(tmp_path / "a", seed=3)
    b = tiny.build_clip(tmp_path / "b", seed=3)
    assert (a / "open_clip_model.safetensors").read_bytes() == (
        b / "open_clip_model.safetensors"
    ).read_bytes()
    t1 = tiny.train_bpe_tokenizer()
    t2 = tiny.train_bpe_tokenizer()
    assert t1.get_vocab() == t2.get_vocab()


def test_hub_ids_take_the_same_path_and_fail_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="Qwen/Qwen2.5-VL-7B-Instruct.*hub"):
        load_vlm("Qwen/Qwen2.5-VL-7B-Instruct")
    with pytest.raises(ModelLoadError, match="models/tiny/missing.*tiny_models"):
        load_vlm("models/tiny/missing")


def test_clip_hub_name_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="ViT-L-14"):
        load_clip("ViT-L-14", pretrained="openai")


def test_the_text_encoder_is_byte_identical_across_builds(tmp_path):
    """A tiny model that changes from build to build reruns every DVC stage below it."""
    from ebmrl.models import tiny

    first = tiny.build_text_encoder(tmp_path / "a", seed=0)
    second = tiny.build_text_encoder(tmp_path / "b", seed=0)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
