import json

import numpy as np
import pytest
import torch

from ebmrl import video
from ebmrl.models import ModelLoadError, load_clip, load_text_encoder_spec, load_vlm
from ebmrl.models.tiny import QWEN_SPECIAL_TOKENS
from ebmrl.models.vlm import encode, generate_text, video_messages, vision_pad_token_ids
from ebmrl.scene_words import ATTRIBUTES


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


# ------------------------------------------------------- the tiny CLIP that sees (issue 13)
def test_the_fast_text_path_equals_open_clips_encode_text(tiny_models):
    from ebmrl.models.clip_training import encode_text_prefix

    model, _, tokenizer = load_clip(tiny_models["clip"])
    tokens = tokenizer(["Two teal figures in a dim street.", "Fire.", "A very " * 30])
    with torch.no_grad():
        assert torch.allclose(encode_text_prefix(model, tokens), model.encode_text(tokens))


def test_clip_training_is_deterministic_and_loads_like_any_open_clip_folder(tmp_path):
    from ebmrl.config import TinyClipSection
    from ebmrl.models import tiny
    from ebmrl.models.clip_training import train_clip

    settings = TinyClipSection(steps=15, batch_size=16, train_scenes=24, eval_scenes=8)
    reports = []
    for name in ("a", "b"):
        reports.append(train_clip(tiny.build_clip(tmp_path / name, seed=1), settings, seed=1))
    weights = "open_clip_model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    assert reports[0] == reports[1]
    assert (tmp_path / "a" / weights).read_bytes() != tiny.build_clip(
        tmp_path / "c", seed=1
    ).joinpath(weights).read_bytes()  # training changed the weights
    marker = json.loads((tmp_path / "a" / "EBMRL_TINY.json").read_text())
    assert marker["random_weights"] is False and marker["training"]["steps"] == 15
    model, preprocess, tokenizer = load_clip(tmp_path / "a")  # the same path as ViT-L-14
    assert model.encode_text(tokenizer(["x"])).shape == (1, 32)


def test_clip_training_never_renders_the_demos_clips():
    from ebmrl import demo
    from ebmrl.models.clip_training import render_scenes
    from ebmrl.models.scene_clips import EVAL_STREAM, TRAIN_STREAM, SceneGeometry

    def identity(image):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(image)))

    seen = set()
    for index, scene in enumerate(demo.make_scenes(24, 0, 128, 96, 8, 2.0, 18.0)):
        seen |= {f.tobytes() for f in demo.render_frames(scene, index)}  # demo seed 0
    for stream in (TRAIN_STREAM, EVAL_STREAM):
        rendered = render_scenes(40, 0, stream, SceneGeometry(), identity, frames=2)
        assert len(rendered.images) == 80
        assert not {img.numpy().tobytes() for img in rendered.images} & seen


def test_the_trained_clip_sees_the_demo_clips(tiny_models, demo_data):
    """On the demo's own H.264 clips (never trained on): each clip's reference perception
    is closest to its own frames, and a wrong colour or danger lowers the CLIP reward."""
    from ebmrl import demo
    from ebmrl.rewards.clip import OpenClipEncoder, max_frame_similarity

    encoder = OpenClipEncoder.load(str(tiny_models["clip"]))
    scenes = demo.load_scenes(demo_data["scenes"])
    frames = [
        encoder.encode_frames(
            video.sample_frames(demo_data["videos"] / f"{s.clip_id}.mp4", count=4)[0]
        )
        for s in scenes
    ]
    texts = encoder.encode_texts([demo.perception_text(s) for s in scenes]).vectors
    rewards = np.array([[max_frame_similarity(t, f) for f in frames] for t in texts])
    assert (rewards.argmax(axis=1) == np.arange(len(scenes))).mean() >= 0.5, rewards
    for scene, own in zip(scenes, frames, strict=True):
        right = demo.perception_text(scene)
        other = next(c for c in demo.COLOURS if c != scene.background)
        wrong_colour = right.replace(f" {scene.background} street", f" {other} street")
        flipped = demo.perception_text(demo.Scene(**{**scene.__dict__, "danger": not scene.danger}))
        vectors = encoder.encode_texts([right, wrong_colour, flipped]).vectors
        score = [max_frame_similarity(v, own) for v in vectors]
        assert score[0] > score[1] and score[0] > score[2], (scene, score)


@pytest.mark.slow  # runs real DVC / trains a model: the full tier only
def test_the_tiny_models_stage_reports_retrieval_above_chance(tmp_path):
    import yaml

    from ebmrl.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "tiny_models": {
                    "vlm": {
                        "steps": 3,
                        "batch_size": 2,
                        "train_scenes": 4,
                        "eval_scenes": 2,
                        "long_context_steps": 2,
                        "long_context_batch_size": 2,
                    },
                    "clip": {"steps": 150, "train_scenes": 128, "eval_scenes": 32},
                }
            }
        )
    )
    out, metrics = tmp_path / "tiny", tmp_path / "tiny_models.json"
    args = ["--params", str(params), "tiny-models", "--out", str(out), "--metrics", str(metrics)]
    assert main(args) == 0
    written = json.loads(metrics.read_text())
    assert set(written["vlm"]["attribute_accuracy"]) == set(
        written["vlm"]["untrained"]["attribute_accuracy"]
    )
    report = written["clip"]
    assert report["retrieval_chance"] == pytest.approx(1 / 32, abs=1e-4)
    assert report["retrieval_top1"] >= 3 * report["retrieval_chance"], report
    assert report["retrieval_top1"] > report["untrained"]["retrieval_top1"]
    assert report["attribute_accuracy"]["background"] > 2 * report["attribute_chance"]["background"]
    flat = json.dumps(report)
    assert "second" not in flat and "time" not in flat  # timings go to the log, not metrics
    assert sorted(p.name for p in out.iterdir()) == ["clip", "minilm", "qwen2_5_vl", "text_encoder"]


def test_the_packaged_minilm_is_the_real_encoder(tmp_path):
    from ebmrl.models.packaged import copy_minilm
    from ebmrl.rewards.answer import make_bert_scorer
    from ebmrl.rewards.embed import HFSentenceEmbedder

    folder = copy_minilm(tmp_path / "minilm")
    embed = HFSentenceEmbedder.load(str(folder))
    v = embed(
        ["A man is eating food.", "A man is eating a piece of bread.", "A girl rides a horse."]
    )
    assert v[0] @ v[1] > 0.6 > 0.1 > v[0] @ v[2]  # trained sentence similarity, not noise
    scorer = make_bert_scorer(str(folder), 5)
    _, _, same = scorer.score(["Fire on the ground, get back."], ["Fire on the ground, get back."])
    _, _, close = scorer.score(["Flames below, run!"], ["Fire on the ground, get back."])
    _, _, far = scorer.score(["What a quiet blue street."], ["Fire on the ground, get back."])
    assert same.item() == pytest.approx(1.0, abs=1e-5) and close.item() > far.item()


# ------------------------------------------------- the tiny VLM pretrained to caption (issue 13)
def test_caption_batches_label_only_the_caption(vlm, demo_data):
    from ebmrl.models.caption_training import caption_batch

    processor = vlm[1]
    frames = video.sample_frames(sorted(demo_data["videos"].glob("*.mp4"))[0], count=4)[0]
    captions = ["Two teal figures in a dim red street.", "Fire."]
    batch = caption_batch(processor, captions, [frames, frames])
    assert "pixel_values_videos" in batch  # the clip is seen, as video
    for row, caption in enumerate(captions):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert processor.tokenizer.decode(labelled) == caption + "<|im_end|>"
        start = batch["input_ids"][row].tolist().index(labelled[0])
        assert batch["input_ids"][row][start : start + len(labelled)].tolist() == labelled


def test_captions_after_a_long_context_label_only_the_caption(vlm, demo_data):
    from ebmrl.models.caption_training import caption_batch

    processor = vlm[1]
    frames = video.sample_frames(sorted(demo_data["videos"].glob("*.mp4"))[0], count=8)[0]
    contexts = [("You are Mira Vale.\n\nAnswer in three blocks.", "The conversation so far:"),
                ("", "")]  # fmt: skip
    batch = caption_batch(processor, ["Fire.", "A dim red street."], [frames, frames], contexts)
    for row, caption in enumerate(["Fire.", "A dim red street."]):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert processor.tokenizer.decode(labelled) == caption + "<|im_end|>"
    prompt = processor.tokenizer.decode(batch["input_ids"][0])
    assert "You are Mira Vale." in prompt and "The conversation so far:" in prompt
    # the system text comes before the clip, the user text after it
    assert prompt.index("Mira Vale") < prompt.index("<|vision_start|>") < prompt.index("so far")
    assert "Describe what you see" not in prompt  # not the plain instruction


def test_both_caption_batches_must_fit_the_training_scenes():
    from ebmrl.config import TinyVlmSection

    with pytest.raises(ValueError, match=r"long_context_batch_size \(8\) exceeds train_scenes"):
        TinyVlmSection(train_scenes=4, batch_size=2, long_context_batch_size=8)
    with pytest.raises(ValueError, match=r"^(?s:.*)\bbatch_size \(8\) exceeds train_scenes"):
        TinyVlmSection(train_scenes=4, batch_size=8, long_context_batch_size=2)
    TinyVlmSection(train_scenes=4, batch_size=4, long_context_batch_size=4)


def test_long_contexts_are_corpus_lines_within_the_word_budget():
    import numpy as np

    from ebmrl.models.caption_training import long_contexts
    from ebmrl.models.tiny import corpus_lines

    lines = set(corpus_lines())
    rng, again = np.random.default_rng(0), np.random.default_rng(0)
    batches = [long_contexts(4, 900, rng) for _ in range(100)]
    assert batches == [long_contexts(4, 900, again) for _ in range(100)]  # seeded
    longest = max(len(line.split()) for line in lines)
    for batch in batches:
        for system, user in batch:
            for text, budget in ((system, 600), (user, 300)):
                parts = [p.strip() for p in text.split("\n\n") if p.strip()]
                assert len(text.split()) < budget + longest  # the last line may overrun
                assert all(any(p in line for line in lines) for p in parts)
        sizes = [len(s.split()) + len(u.split()) for s, u in batch]
        assert max(sizes) - min(sizes) < 2 * longest  # one length per batch: little padding
        assert len({s for s, _ in batch}) > 1 or not batch[0][0]  # but not one text
    totals = [len(b[0][0].split()) + len(b[0][1].split()) for b in batches]
    assert min(totals) < 200 and max(totals) > 700  # lengths spread over the budget
    assert long_contexts(3, 0, np.random.default_rng(0)) == [("", "")] * 3


@pytest.mark.slow  # runs real DVC / trains a model: the full tier only
def test_caption_pretraining_is_deterministic_lowers_its_loss_and_loads_by_path(tmp_path):
    from ebmrl.config import TinyVlmSection
    from ebmrl.models import tiny
    from ebmrl.models.caption_training import train_captions

    settings = TinyVlmSection(
        steps=40, batch_size=4, train_scenes=12, eval_scenes=2,
        long_context_steps=4, long_context_batch_size=2, long_context_words=60,
    )  # fmt: skip
    untrained = tiny.build_qwen2_5_vl(tmp_path / "untrained", seed=1)
    reports = [
        train_captions(tiny.build_qwen2_5_vl(tmp_path / name, seed=1), settings, seed=1)
        for name in ("a", "b")
    ]
    weights = "model.safetensors"
    trained = (tmp_path / "a" / weights).read_bytes()
    assert trained == (tmp_path / "b" / weights).read_bytes()
    assert reports[0] == reports[1]
    assert trained != (untrained / weights).read_bytes()  # training changed the weights
    assert reports[0]["loss_last"] < reports[0]["loss_first"] - 0.5, reports[0]
    assert set(reports[0]["attribute_accuracy"]) == set(ATTRIBUTES)
    assert reports[0]["untrained"]["caption_accuracy"] == 0.0  # random weights see nothing
    long_context = reports[0]["long_context"]  # then captions after long text
    assert long_context["steps"] == 4 and long_context["frames"] == 8
    assert set(long_context["attribute_accuracy"]) == set(
        long_context["before"]["attribute_accuracy"]
    )
    marker = json.loads((tmp_path / "a" / "EBMRL_TINY.json").read_text())
    assert marker["random_weights"] is False and marker["training"]["steps"] == 40
    model, processor = load_vlm(tmp_path / "a")  # the path every stage loads the base by
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_caption_scenes_are_never_the_demos_clips():
    from ebmrl import demo
    from ebmrl.models.caption_training import CLIP_SECONDS
    from ebmrl.models.scene_clips import EVAL_STREAM, TRAIN_STREAM, SceneGeometry, render_clips

    seen = set()
    for index, scene in enumerate(demo.make_scenes(24, 0, 128, 96, 8, 2.0, 18.0)):
        seen |= {f.tobytes() for f in demo.render_frames(scene, index)}  # demo seed 0
    streams = {}
    for stream in (TRAIN_STREAM, EVAL_STREAM):
        rendered = render_clips(12, 0, stream, SceneGeometry(), CLIP_SECONDS)
        assert [len(c) for c in rendered.clips] == [int(CLIP_SECONDS * 8)] * 12
        assert all(set(a) == set(ATTRIBUTES) for a in rendered.attributes)
        streams[stream] = {f.tobytes() for clip in rendered.clips for f in clip}
        assert not streams[stream] & seen
    assert not streams[TRAIN_STREAM] & streams[EVAL_STREAM]  # held-out scenes are unseen
