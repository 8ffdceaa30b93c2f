"""The tiny models a session builds are reused by later sessions only while everything
they are built from is unchanged (``conftest.tiny_models_key``)."""

from __future__ import annotations

import shutil

from conftest import REPO_ROOT, tiny_models_key


def copy_package(tmp_path):
    shutil.copytree(
        REPO_ROOT / "ebmrl", tmp_path / "ebmrl", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_the_key_is_the_same_for_the_same_sources(tmp_path):
    assert tiny_models_key(copy_package(tmp_path)) == tiny_models_key() == tiny_models_key()


def test_any_change_at_or_below_the_models_layer_changes_the_key(tmp_path):
    root = copy_package(tmp_path)
    before = tiny_models_key(root)
    seen = {before}
    for changed in ("models/clip_training.py", "scene_words.py", "config.py", "demo.py"):
        path = root / "ebmrl" / changed
        path.write_text(path.read_text() + "\n# changed\n")
        seen.add(tiny_models_key(root))
    (root / "ebmrl" / "models" / "new_builder.py").write_text("X = 1\n")
    seen.add(tiny_models_key(root))
    assert len(seen) == 6, "every change gives a new key"


def test_code_above_the_models_layer_does_not_change_the_key(tmp_path):
    root = copy_package(tmp_path)
    before = tiny_models_key(root)
    for changed in ("eval/report.py", "train/grpo.py", "stages/evaluate.py", "cli.py"):
        path = root / "ebmrl" / changed
        path.write_text(path.read_text() + "\n# changed\n")
    assert tiny_models_key(root) == before


def test_a_change_to_the_fixtures_build_recipe_changes_the_key(monkeypatch):
    import conftest

    before = tiny_models_key()

    def build_tiny_models(out):  # the same name, another recipe (say, another seed)
        return {"seed": 1}

    monkeypatch.setattr(conftest, "build_tiny_models", build_tiny_models)
    assert tiny_models_key() != before
