"""Checkpoints copied to object storage and resumed on another machine
(``ebmrl.train.checkpoint_sync``), on a local folder as the store (fsspec); the same code
against the S3 server: tests/test_s3.py, and a real kill on a real trainer:
tests/test_training.py and tests/test_flows_e2e.py."""

import json

from conftest import fake_checkpoint

from ebmrl.train.checkpoint_sync import (
    SYNCED,
    URI_ENV,
    CheckpointStore,
    checkpoint_step,
    checkpoints_uri,
)
from ebmrl.train.trl_args import FINGERPRINT, checkpoint_to_resume


def test_push_fetch_and_prune_round_trip(tmp_path):
    store = CheckpointStore.for_run(str(tmp_path / "store"), "grpo", "abc123")
    assert store.root.endswith("store/grpo/abc123")
    assert store.synced_steps() == [] and store.newest_step() == 0
    local = tmp_path / "machine-a"
    for step in (1, 2, 3):
        fake_checkpoint(local, step)
        store.push(local / f"checkpoint-{step}", {"step": step, "started_at_step": 0})
    assert store.synced_steps() == [1, 2, 3]
    assert store.record(3) == {"step": 3, "started_at_step": 0}
    store.prune(keep=2)
    assert store.synced_steps() == [2, 3]
    fetched = store.fetch(3, tmp_path / "machine-b")
    assert fetched.name == "checkpoint-3"
    assert (fetched / "sub" / "weights.bin").read_bytes() == bytes([3]) * 1000
    assert not (fetched / SYNCED).exists()  # the store's record stays in the store
    assert sorted(p.name for p in fetched.parent.iterdir()) == ["checkpoint-3"]  # no temp left


def test_an_upload_cut_short_is_never_resumed(tmp_path):
    store = CheckpointStore.for_run(str(tmp_path / "store"), "sft", "fp")
    local = tmp_path / "local"
    fake_checkpoint(local, 4)
    store.push(local / "checkpoint-4", {"step": 4})
    # checkpoint-6 has its files but no record: the uploader died before the end.
    partial = tmp_path / "store" / "sft" / "fp" / "checkpoint-6"
    partial.mkdir(parents=True)
    (partial / "trainer_state.json").write_text("{}")
    assert store.synced_steps() == [4]
    # A retry of the same step replaces what was there.
    fake_checkpoint(local, 6)
    store.push(local / "checkpoint-6", {"step": 6})
    assert store.synced_steps() == [4, 6]


def test_a_fresh_machine_resumes_from_the_newest_synced_checkpoint(tmp_path):
    store = CheckpointStore.for_run(str(tmp_path / "store"), "grpo", "run-1")
    first = tmp_path / "first" / "checkpoints"
    assert checkpoint_to_resume(first, "run-1", True, store) is None  # nothing anywhere
    fake_checkpoint(first, 2)
    store.push(first / "checkpoint-2", {"step": 2})
    fresh = tmp_path / "fresh" / "checkpoints"
    resume = checkpoint_to_resume(fresh, "run-1", True, store)
    assert resume is not None and checkpoint_step(resume) == 2
    assert json.loads((fresh / FINGERPRINT).read_text()) == {"fingerprint": "run-1"}
    # A local checkpoint behind the store's newest (an older attempt on this machine):
    # the newer one is fetched.
    stale = tmp_path / "stale" / "checkpoints"
    checkpoint_to_resume(stale, "run-1", True, None)
    fake_checkpoint(stale, 1)
    assert checkpoint_step(checkpoint_to_resume(stale, "run-1", True, store)) == 2
    # Another run's store holds nothing for this one.
    other = CheckpointStore.for_run(str(tmp_path / "store"), "grpo", "run-2")
    assert checkpoint_to_resume(tmp_path / "other", "run-2", True, other) is None


def test_the_environment_wins_over_params(monkeypatch):
    monkeypatch.delenv(URI_ENV, raising=False)
    assert checkpoints_uri(None) is None
    assert checkpoints_uri("s3://bucket/ckpt") == "s3://bucket/ckpt"
    monkeypatch.setenv(URI_ENV, "s3://dvc-remote/checkpoints")
    assert checkpoints_uri("s3://bucket/ckpt") == "s3://dvc-remote/checkpoints"
