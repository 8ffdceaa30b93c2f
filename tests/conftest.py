"""Shared fixtures: tiny models and demo data built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One torch thread: tests are many small ops on a 2-core machine; threads only thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI lays a copy of the team's shared/ folder beside the clone.
SHARED_DIR = Path(os.environ.get("EBMRL_SHARED_DIR", REPO_ROOT.parent / "shared"))


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from ebmrl.models import tiny

    return tiny.build_all(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    from ebmrl.data import demo

    return demo.generate(
        tmp_path_factory.mktemp("demo"), seed=0, num_clips=6, num_sessions=3, samples_per_clip=2
    )


@pytest.fixture(scope="session")
def rp_sample_dir() -> Path:
    path = SHARED_DIR / "data" / "rp-sample"
    if not path.is_dir():
        pytest.skip(f"public samples not present at {path}")
    return path
