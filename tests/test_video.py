import math
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest
from conftest import real_clip
from hypothesis import given, settings
from hypothesis import strategies as st

from ebmrl import config, video
from ebmrl.demo import load_scenes
from ebmrl.video import VideoError


@pytest.mark.parametrize(
    ("duration", "frames"),
    [(0.5, 4), (4.99, 4), (5.0, 8), (14.9, 8), (15.0, 16), (59.9, 16), (60.0, 32), (3600, 32)],
)
def test_paper_frame_schedule(duration, frames):
    assert video.frames_for_duration(duration) == frames


def test_schedule_from_params_is_configurable():
    params = config.validate(
        {
            "video": {
                "clip_frame_schedule": [
                    {"max_duration_s": 10, "frames": 2},
                    {"max_duration_s": None, "frames": 6},
                ]
            }
        }
    )
    assert video.frames_for_duration(9, params.video.clip_schedule()) == 2
    assert video.frames_for_duration(10, params.video.clip_schedule()) == 6
    assert config.Params().video.clip_schedule() == video.PAPER_FRAME_SCHEDULE


def test_uniform_indices():
    assert video.uniform_indices(100, 4) == [12, 37, 62, 87]
    assert video.uniform_indices(3, 6) == [0, 0, 1, 1, 2, 2]
    assert video.uniform_indices(0, 4) == []
    idx = video.uniform_indices(1000, 32)
    assert idx == sorted(idx) and len(set(idx)) == 32 and idx[0] >= 0 and idx[-1] < 1000


def test_probe_matches_rendered_scene(demo_data):
    scenes = {s.clip_id: s for s in load_scenes(demo_data["scenes"])}
    for path in sorted(demo_data["videos"].glob("*.mp4")):
        scene = scenes[path.stem]
        info = video.probe(path)
        assert info.fps == pytest.approx(scene.fps)
        assert info.duration_s == pytest.approx(scene.duration_s, abs=1.0 / scene.fps)
        assert (info.width, info.height) == (scene.width, scene.height)


def test_sample_frames_count_by_duration(demo_data):
    for path in sorted(demo_data["videos"].glob("*.mp4")):
        frames, indices, info = video.sample_frames(path)
        expected = video.frames_for_duration(info.duration_s)
        assert frames.shape == (expected, info.height, info.width, 3)
        assert frames.dtype == np.uint8 and len(indices) == expected


def test_sample_frames_resize(demo_data):
    path = next(demo_data["videos"].glob("*.mp4"))
    frames, _, _ = video.sample_frames(path, count=3, size=(32, 24))
    assert frames.shape == (3, 24, 32, 3)


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"])
@pytest.mark.slow
def test_real_h264_clips_match_pyav(name):
    path = real_clip(name)
    info = video.probe(path)
    assert info.num_frames > 10 and info.width > 100 and info.duration_s > 0.5
    frames, indices, _ = video.sample_frames(path, count=4)
    assert frames.shape[0] == 4
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for frame, index in zip(frames, indices, strict=True):
        # decord and PyAV use the same FFmpeg decoder; colour conversion may differ by 1-2 levels.
        assert np.abs(frame.astype(int) - decoded[index].astype(int)).mean() < 3.0


def test_fsspec_urls(demo_data):
    path = next(demo_data["videos"].glob("*.mp4"))
    with fsspec.open("memory://clips/a.mp4", "wb") as handle:
        handle.write(path.read_bytes())
    assert video.probe("memory://clips/a.mp4") == video.probe(path)
    frames, _, _ = video.sample_frames("memory://clips/a.mp4", count=2)
    assert frames.shape[0] == 2
    assert video.probe(f"file://{path}") == video.probe(path)


def corrupt_zoo(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    zoo = {
        "missing": tmp_path / "missing.mp4",
        "empty": tmp_path / "empty.mp4",
        "directory": tmp_path / "dir.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "text": tmp_path / "notes.mp4",
        "random": tmp_path / "random.mp4",
        "header_only": tmp_path / "header.mp4",
    }
    zoo["empty"].write_bytes(b"")
    zoo["directory"].mkdir()
    zoo["truncated"].write_bytes(data[: len(data) // 3])
    zoo["text"].write_text("this is not a video\n" * 20)
    zoo["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    zoo["header_only"].write_bytes(data[:64])
    return zoo


def test_unreadable_files_raise_video_error_with_reason(tmp_path, demo_data):
    good = next(demo_data["videos"].glob("*.mp4"))
    for kind, path in corrupt_zoo(tmp_path, good).items():
        with pytest.raises(VideoError) as info:
            video.probe(path)
        assert info.value.uri == str(path), kind
        assert info.value.reason, kind
        with pytest.raises(VideoError):
            video.sample_frames(path, count=2)
    assert video.probe(good).num_frames > 0  # the good file is untouched


def test_missing_remote_object():
    with pytest.raises(VideoError, match="not found"):
        video.probe("memory://nowhere/missing.mp4")


# ------------------------------------------------ the authors' two samplings, by hand
def authors_clip_indices(total, fps):
    """preprocess_rl_video_clip.py's rule written out: 25 fps when unknown, the duration
    buckets, all frames of a short clip, else linspace(0, n-1, k) truncated."""
    fps = fps if fps > 0 else 25.0
    duration = total / fps
    k = 4 if duration < 5 else 8 if duration < 15 else 16 if duration < 60 else 32
    if total <= k:
        return list(range(total))
    return [i * (total - 1) // (k - 1) for i in range(k)]  # exact floor of the linspace


@pytest.mark.parametrize(
    ("total", "fps", "expected"),
    [
        (100, 25.0, [0, 33, 66, 99]),  # 4 s: 4 frames
        (3, 25.0, [0, 1, 2]),  # fewer frames than 4: all of them
        (125, 25.0, [0, 17, 35, 53, 70, 88, 106, 124]),  # 5.0 s: 8 frames, 124 k / 7 floored
        (300, 0.0, [0, 42, 85, 128, 170, 213, 256, 299]),  # fps 0 read as 25: 12 s
        (300, -3.0, [0, 42, 85, 128, 170, 213, 256, 299]),
        (1500, 25.0, [i * 1499 // 31 for i in range(32)]),  # 60 s: 32 frames
    ],
)
def test_clip_frame_indices_hand_computed(total, fps, expected):
    assert video.clip_frame_indices(total, fps) == expected


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 20_000), st.floats(-5, 120, allow_nan=False))
def test_clip_frame_indices_are_the_authors(total, fps):
    assert video.clip_frame_indices(total, fps) == authors_clip_indices(total, fps)


def qwen_policy_indices(total, fps, sample_fps=2.0, min_frames=4, max_frames=16):
    """qwen-vl-utils' rule written out: total / fps * sample_fps frames, at least
    min_frames, at most max_frames and the clip, rounded down to an even count; indices
    linspace(0, total - 1, n) rounded (half to even)."""
    n = total / fps * sample_fps
    n = min(max(n, math.ceil(min_frames / 2) * 2), max_frames // 2 * 2, total)
    n = int(n // 2 * 2)
    return [round(k * (total - 1) / (n - 1)) for k in range(n)]


@pytest.mark.parametrize(
    ("total", "fps", "expected"),
    [
        (48, 24.0, [0, 16, 31, 47]),  # 2 s at 2 fps = 4 frames: 0, 15.67, 31.33, 47
        (240, 24.0, [round(k * 239 / 15) for k in range(16)]),  # 10 s = 20: capped at 16
        (30, 30.0, [0, 10, 19, 29]),  # 1 s = 2 frames: raised to the minimum 4
        (5, 30.0, [0, 1, 3, 4]),  # a 5-frame clip: 4 of them, 0, 1.33, 2.67, 4 rounded
        (3, 30.0, [0, 2]),  # 3 frames: at most 3, even: 2
    ],
)
def test_policy_frame_indices_hand_computed(total, fps, expected):
    got = video.policy_frame_indices(total, fps, sample_fps=2.0, min_frames=4, max_frames=16)
    assert got == expected == qwen_policy_indices(total, fps)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 5_000), st.floats(1, 60), st.integers(2, 8), st.integers(8, 32))
@pytest.mark.slow
def test_policy_frame_indices_are_qwen_vl_utils_rule(total, fps, min_frames, max_frames):
    got = video.policy_frame_indices(
        total, fps, sample_fps=2.0, min_frames=min_frames, max_frames=max_frames
    )
    assert got == qwen_policy_indices(total, fps, 2.0, min_frames, max_frames)
    assert len(got) % 2 == 0 and got == sorted(got)


@pytest.mark.parametrize(
    ("size", "max_pixels", "expected"),
    [
        ((1080, 1920), 100_352, (224, 420)),  # scaled by sqrt(2073600 / 100352), floored to 28
        ((96, 128), 100_352, (84, 140)),  # small: rounded to multiples of 28, not upscaled
        ((720, 1280), 602_112, (560, 1008)),
    ],
)
def test_policy_frame_size_hand_computed(size, max_pixels, expected):
    got = video.policy_frame_size(*size, min_pixels=3136, max_pixels=max_pixels)
    assert got == expected and got[0] % 28 == got[1] % 28 == 0
    assert got[0] * got[1] <= max_pixels
