import numpy as np
import pytest

from ebmrl import demo, video
from ebmrl.scene_words import scene_attributes
from ebmrl.schema import load_profiles, load_released


@pytest.mark.slow
def test_generation_is_deterministic(tmp_path):
    a = demo.generate(tmp_path / "a", seed=7, num_clips=3, num_sessions=2)
    b = demo.generate(tmp_path / "b", seed=7, num_clips=3, num_sessions=2)
    for name in ("clip_0000.mp4", "clip_0001.mp4", "clip_0002.mp4"):
        assert (a["videos"] / name).read_bytes() == (b["videos"] / name).read_bytes()
    assert a["samples"].read_text() == b["samples"].read_text()
    c = demo.generate(tmp_path / "c", seed=8, num_clips=3, num_sessions=2)
    assert c["scenes"].read_text() != a["scenes"].read_text()


def test_rendered_pixels_show_the_scene_attributes(demo_data):
    scenes = demo.load_scenes(demo_data["scenes"])
    for scene in scenes:
        frames, _, _ = video.sample_frames(demo_data["videos"] / f"{scene.clip_id}.mp4", count=4)
        top = frames[:, : scene.height // 3].astype(float)  # sky: background colour only
        brightness = top.mean()
        if scene.lighting == "bright":
            assert brightness > 60, scene
        else:
            assert brightness < 80, scene
        # The dominant background channel survives encoding.
        rgb = np.array(demo.COLOURS[scene.background], dtype=float)
        if rgb.max() - np.sort(rgb)[-2] > 50:
            assert top.mean(axis=(0, 1, 2)).argmax() == rgb.argmax(), scene
        bottom = frames[:, -scene.height // 8 :].astype(float)
        orange = (bottom[..., 0] > 200) & (bottom[..., 2] < 80)
        assert (orange.mean() > 0.1) == scene.danger, scene


def test_samples_follow_the_released_format_and_are_grounded(demo_data):
    samples = load_released(demo_data["samples"])
    scenes = {s.clip_id: s for s in demo.load_scenes(demo_data["scenes"])}
    book = load_profiles(demo_data["profiles"])
    assert len(samples) == 6 * 2
    assert len({s.session_id for s in samples}) == 3
    for sample in samples:
        scene = scenes[sample.clip_id]
        assert (demo_data["samples"].parent / sample.video).is_file()
        assert sample.has_trace and sample.solution == f"<answer>{sample.target.utterance}</answer>"
        assert sample.perception == demo.perception_text(scene)
        assert sample.scene_attributes.known() == scene_attributes(scene)  # the ground truth
        assert ("dangerous" in sample.perception) == scene.danger
        assert sample.target.speaker == sample.assistant
        assert book.get(sample.assistant, sample.source) is not None
        assert book.get(sample.user, sample.source) is not None
        assert sample.dialogue[-1].speaker == sample.user
    # History grows within a session.
    first_session = samples[0].session_id
    lengths = [len(s.dialogue) for s in samples if s.session_id == first_session]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0]


@pytest.mark.slow
def test_dozens_of_clips_in_seconds(tmp_path):
    import time

    started = time.perf_counter()
    demo.generate(tmp_path, seed=1, num_clips=24, num_sessions=6)
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 24
    assert time.perf_counter() - started < 30


@pytest.mark.slow
def test_regeneration_removes_stale_clips(tmp_path):
    demo.generate(tmp_path, seed=1, num_clips=4, num_sessions=2)
    demo.generate(tmp_path, seed=1, num_clips=2, num_sessions=2)
    assert sorted(p.name for p in (tmp_path / "videos").glob("*.mp4")) == [
        "clip_0000.mp4",
        "clip_0001.mp4",
    ]
