"""A model is identified by its content: a copy (a ``dvc checkout``, a ``dvc pull`` on a
fresh worker, ``cp -r``) resumes the run it started, other weights start afresh, and a
file is hashed once while its size, modification time and inode stay the same."""

import os
import shutil

import pytest

from ebmrl.models import identity
from ebmrl.train.trl_args import checkpoint_to_resume, run_fingerprint


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(identity.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / identity.CACHE_FILE


def make_model(folder, weights=b"\x01\x02" * 4096):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 64}\n')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def recopy(src, dest):
    """A copy with new files: new inodes and (set explicitly) new modification times."""
    shutil.copytree(src, dest, copy_function=shutil.copyfile)
    for path in dest.iterdir():
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    return dest


def start_fingerprint(model):
    return run_fingerprint(sft={"learning_rate": 1e-3}, start=identity.model_identity(model))


def test_a_recopied_start_model_resumes_its_run(tmp_path):
    original = make_model(tmp_path / "final")
    checkpoints = tmp_path / "checkpoints"
    assert checkpoint_to_resume(checkpoints, start_fingerprint(original), True) is None
    (checkpoints / "checkpoint-3").mkdir()
    (checkpoints / "checkpoint-3" / "trainer_state.json").write_text("{}")
    # The same weights elsewhere, and at the same path rewritten (what dvc checkout does).
    copy = recopy(original, tmp_path / "pulled" / "final")
    shutil.rmtree(original)
    recopy(copy, original)
    for model in (copy, original):
        resumed = checkpoint_to_resume(checkpoints, start_fingerprint(model), True)
        assert resumed is not None and resumed.endswith("checkpoint-3")


def test_a_different_start_model_starts_afresh(tmp_path):
    original = make_model(tmp_path / "final")
    checkpoints = tmp_path / "checkpoints"
    checkpoint_to_resume(checkpoints, start_fingerprint(original), True)
    (checkpoints / "checkpoint-3").mkdir()
    other = make_model(tmp_path / "other" / "final", weights=b"\x01\x03" * 4096)  # same size
    assert checkpoint_to_resume(checkpoints, start_fingerprint(other), True) is None
    assert not (checkpoints / "checkpoint-3").exists()  # the other run's checkpoints are gone


def test_each_file_is_hashed_once_while_its_status_is_unchanged(tmp_path, monkeypatch):
    model = make_model(tmp_path / "final")
    reads = []
    real = identity.hash_file
    monkeypatch.setattr(identity, "hash_file", lambda path: reads.append(path) or real(path))
    first = identity.folder_digest(model)
    assert len(reads) == 2
    assert identity.folder_digest(model) == first and len(reads) == 2  # from the cache
    # Rewritten in place with the same size, mtime and inode: the cache is trusted...
    weights = model / "model.safetensors"
    status = weights.stat()
    with open(weights, "r+b") as handle:
        handle.write(b"\xff")
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert identity.folder_digest(model) == first and len(reads) == 2
    # ...and any change of status makes it read the file again.
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns + 1))
    assert identity.folder_digest(model) != first and len(reads) == 3


def test_a_hub_id_is_its_own_identity_and_fingerprints_name_the_content(tmp_path):
    assert identity.model_identity("Qwen/Qwen2.5-VL-7B-Instruct") == {
        "id": "Qwen/Qwen2.5-VL-7B-Instruct"
    }
    model = make_model(tmp_path / "final")
    copy = recopy(model, tmp_path / "copy")
    name = identity.model_fingerprint(model)
    assert (
        name.startswith(f"{model}@")
        and name.split("@")[1] == (identity.model_fingerprint(copy).split("@")[1])
    )
