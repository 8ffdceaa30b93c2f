import os
import stat

import pytest

from ebmrl.io import atomic_path, atomic_write_text, read_json, write_json


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "folder", is_dir=True) as tmp:
            (tmp / "inner.txt").write_text("y")
    finally:
        os.umask(umask)
    assert mode(tmp_path / "a.txt") == 0o644
    assert mode(tmp_path / "folder") == 0o755


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "data.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_a_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "old.txt").write_text("1")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "new.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
