import json
import pickle

import numpy as np
import pytest
from conftest import DEMO_SAMPLING

from ebmrl import video
from ebmrl.data import frames
from ebmrl.frame_store import (
    FrameStore,
    FrameStoreError,
    MissingClipError,
    ShardedFrameStore,
    ShardWriter,
)

SCHEDULE = DEMO_SAMPLING.clip_schedule()


def build(tasks, out, embedder, workers=0, shard_mb=64.0, sampling=DEMO_SAMPLING, clip="tiny-clip"):
    return frames.build_store(
        tasks,
        out,
        embedder=embedder,
        settings={"video": sampling.model_dump(mode="json"), "clip": clip},
        sampling=sampling,
        workers=workers,
        shard_size_bytes=int(shard_mb * (1 << 20)),
    )


@pytest.fixture(scope="module")
def embedder(tiny_models):
    return frames.ClipEmbedder.load(str(tiny_models["clip"]), None, batch_size=5)


@pytest.fixture(scope="module")
def tasks(demo_store):
    return [
        frames.FrameTask(c.clip_id, c.uri, c.sha256, c.width, c.height) for c in demo_store["clips"]
    ]


def test_store_holds_policy_frames_and_clip_embeddings_of_clips_own_frames(demo_store, embedder):
    store = ShardedFrameStore.open(demo_store["frames"])
    assert isinstance(store, FrameStore)
    clips = {c.clip_id: c for c in demo_store["clips"]}
    assert store.clip_ids() == sorted(clips)
    for clip_id, clip in clips.items():
        info = video.probe(clip.uri)
        full = video.sample_frames(clip.uri, count=info.num_frames)[0]  # every frame
        # The policy's frames: qwen-vl-utils' count and size, resized as it resizes.
        stored = store.frames(clip_id)
        indices = store.frame_indices(clip_id)
        height, width = video.policy_frame_size(
            info.height, info.width, min_pixels=3136, max_pixels=100_352
        )
        assert stored.shape == (len(indices), height, width, 3) and stored.dtype == np.uint8
        assert np.array_equal(stored, video.resize_frames(full[indices], height, width))
        assert store.timestamps(clip_id) == pytest.approx([i / info.fps for i in indices])
        # CLIP's frames: the authors' indices, full size through CLIP's preprocessing.
        clip_indices = store.clip_frame_indices(clip_id)
        assert clip_indices == video.clip_frame_indices(info.num_frames, info.fps, SCHEDULE)
        emb = store.embeddings(clip_id)
        assert emb.dtype == np.float32 and emb.shape[0] == len(clip_indices)
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        assert np.allclose(emb, embedder(full[clip_indices]), atol=1e-5)
    with pytest.raises(MissingClipError, match="nope"):
        store.frames("nope")
    with pytest.raises(MissingClipError, match="frame embeddings"):
        store.embeddings("nope")
    copy = pickle.loads(pickle.dumps(store))  # e.g. DataLoader workers
    assert np.array_equal(copy.frames(store.clip_ids()[0]), store.frames(store.clip_ids()[0]))


def test_many_clips_per_shard_and_small_shards_split(tmp_path, tasks, embedder):
    report = build(tasks, tmp_path / "one", embedder)
    assert report.shards_written == 1 and len(list((tmp_path / "one" / "shards").iterdir())) == 1
    report = build(tasks, tmp_path / "many", embedder, shard_mb=0.2)
    assert report.shards_written > 1
    store = ShardedFrameStore.open(tmp_path / "many")
    assert len({store.info(c)["shard"] for c in store.clip_ids()}) == report.shards_written
    reference = ShardedFrameStore.open(tmp_path / "one")
    for clip_id in store.clip_ids():
        assert np.array_equal(store.frames(clip_id), reference.frames(clip_id))


@pytest.mark.slow
def test_two_workers_give_the_same_store_as_one_process(tmp_path, tasks, embedder):
    build(tasks, tmp_path / "inline", embedder, workers=0)
    build(tasks, tmp_path / "pool", embedder, workers=2)
    a, b = ShardedFrameStore.open(tmp_path / "inline"), ShardedFrameStore.open(tmp_path / "pool")
    assert a.clip_ids() == b.clip_ids()
    for clip_id in a.clip_ids():
        assert np.array_equal(a.frames(clip_id), b.frames(clip_id))
        assert np.allclose(a.embeddings(clip_id), b.embeddings(clip_id), atol=1e-6)
        assert a.info(clip_id) == b.info(clip_id)


def test_interrupted_run_keeps_shards_and_resumes(tmp_path, tasks, embedder):
    out = tmp_path / "store"
    broken = frames.FrameTask("broken", str(tmp_path / "missing.mp4"), "0" * 64, 96, 72)
    with pytest.raises(frames.FramesError, match="broken"):
        build([*tasks[:3], broken], out, embedder, shard_mb=0.01)
    assert not (out / "index.json").exists()  # not committed
    with pytest.raises(FrameStoreError, match="did the frames stage run"):
        ShardedFrameStore.open(out)
    report = build(tasks, out, embedder, shard_mb=0.01)
    assert report.reused == 3 and report.decoded == len(tasks) - 3
    again = build(tasks, out, embedder)
    assert again.reused == len(tasks) and again.decoded == 0 and again.shards_written == 0
    # New settings: every clip is recomputed and the old shards go away.
    changed = build(tasks[:2], out, embedder, clip="another-clip")
    assert changed.reused == 0
    store = ShardedFrameStore.open(out)
    assert store.clip_ids() == sorted(t.clip_id for t in tasks[:2])
    assert len(list((out / "shards").glob("*.npz"))) == 1
    assert json.loads((out / "index.json").read_text())["settings"]["clip"] == "another-clip"


def test_writer_checks_shapes(tmp_path):
    writer = ShardWriter(tmp_path, {"x": 1})
    with pytest.raises(ValueError, match="2 embeddings for 3 frames"):
        writer.add("c", np.zeros((3, 4, 4, 3), np.uint8), np.ones((2, 8)), {})
    with pytest.raises(ValueError, match="2 embeddings for 3 CLIP frames"):
        writer.add(
            "c", np.zeros((5, 4, 4, 3), np.uint8), np.ones((2, 8)), {"clip_indices": [0, 1, 2]}
        )
    writer.add("c", np.zeros((5, 4, 4, 3), np.uint8), np.ones((3, 8)), {"clip_indices": [0, 1, 2]})


@pytest.mark.slow
def test_frames_stage_with_real_h264_clip_is_resized(tmp_path, embedder):
    from conftest import real_clip

    path = real_clip("bikes.mp4")
    info = video.probe(path)
    task = frames.FrameTask("bikes", str(path), None, info.width, info.height)
    sampling = DEMO_SAMPLING.model_copy(update={"max_pixels_per_frame": 112 * 84, "max_frames": 16})
    frames.build_store([task], tmp_path, embedder=embedder, settings={}, sampling=sampling)
    store = ShardedFrameStore.open(tmp_path)
    stored = store.frames("bikes")
    # qwen-vl-utils' size (sides multiples of 28 within the budget) and count (2 fps).
    height, width = stored.shape[1:3]
    assert height % 28 == width % 28 == 0 and height * width <= 112 * 84
    expected = min(16, max(4, info.num_frames / info.fps * 2.0)) // 2 * 2
    assert stored.shape[0] == expected
    assert len(store.embeddings("bikes")) == len(
        video.clip_frame_indices(info.num_frames, info.fps, SCHEDULE)
    )


def test_shards_are_zip_files_that_numpy_and_unzip_read_byte_for_byte_reproducible(tmp_path):
    import subprocess
    import zipfile

    frames_ = np.random.default_rng(0).integers(0, 255, (3, 8, 12, 3), dtype=np.uint8)
    embeddings = np.random.default_rng(1).normal(size=(2, 16)).astype(np.float32)
    entry = {"clip_indices": [0, 2]}
    shards = []
    for compress, name in ((True, "a"), (True, "b"), (False, "c")):
        writer = ShardWriter(tmp_path / name, {"x": 1}, compress=compress)
        writer.add("clip-1", frames_, embeddings, entry)
        writer.add("clip-2", frames_[:1], embeddings[:1], {"clip_indices": [1]})
        writer.finish(["clip-1", "clip-2"])
        (shard,) = (tmp_path / name / "shards").iterdir()
        shards.append(shard)
        assert zipfile.ZipFile(shard).testzip() is None  # every member's CRC checks
        listing = subprocess.run(["unzip", "-t", str(shard)], capture_output=True, text=True)
        assert listing.returncode == 0 and "No errors detected" in listing.stdout, listing.stdout
        store = ShardedFrameStore.open(tmp_path / name)
        assert np.array_equal(store.frames("clip-1"), frames_)
        assert np.array_equal(store.frames("clip-2"), frames_[:1])
        assert np.allclose(np.linalg.norm(store.embeddings("clip-1"), axis=1), 1.0)
        assert store.info("clip-1")["clip_indices"] == [0, 2]
    # Same content, same bytes (no timestamp in the shard); stored is larger than deflated.
    assert shards[0].read_bytes() == shards[1].read_bytes()
    assert shards[2].stat().st_size > shards[0].stat().st_size
