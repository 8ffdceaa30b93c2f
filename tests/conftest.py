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


# ---------------------------------------------------------------- data stages (issue #4)
@pytest.fixture(scope="session")
def tiny_vlm_backend(tiny_models):
    """The tiny Qwen2.5-VL as a local backend, loaded once per session."""
    from ebmrl.backends.local import LocalVLMBackend

    return LocalVLMBackend(str(tiny_models["vlm"]))


@pytest.fixture
def chat_server(tiny_vlm_backend):
    """Factory: ``chat_server(fail_rate=..., latency_s=...)`` starts ``ebmrl.serve.ChatServer``
    on 127.0.0.1 (free port) in a thread over the tiny VLM; stopped after the test."""
    from ebmrl.serve import ChatServer, Faults

    servers = []

    def start(**faults):
        server = ChatServer(
            tiny_vlm_backend, model_name="tiny-vlm", faults=Faults(**faults)
        ).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory, demo_data, tiny_models):
    """The demo clips ingested and framed once: ``{"ingest": dir, "frames": dir, ...}``."""
    from ebmrl.data import frames, ingest

    root = tmp_path_factory.mktemp("demo_store")
    result = ingest.ingest(
        str(demo_data["videos"]), records=[str(demo_data["samples"])], extensions=["mp4"]
    )
    ingest.write_manifest(root / "ingest" / "manifest.parquet", result.clips)
    from ebmrl.data.jsonl import write_samples

    write_samples(root / "ingest" / "samples.jsonl", result.samples)
    clips = [c for c in result.clips if c.status == "ok"]
    tasks = [frames.FrameTask(c.clip_id, c.uri, c.sha256, c.width, c.height) for c in clips]
    schedule = ((5.0, 4), (15.0, 8), (None, 8))
    embedder = frames.ClipEmbedder.load(str(tiny_models["clip"]), None)
    frames.build_store(
        tasks,
        root / "frames",
        embedder=embedder,
        settings=frames.store_settings(schedule, 100_352, str(tiny_models["clip"]), None),
        schedule=schedule,
        max_pixels=100_352,
        workers=0,
    )
    return {"ingest": root / "ingest", "frames": root / "frames", "clips": clips, "result": result}
