import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebmrl import cli
from ebmrl.backends import GenerationClient, ResponseCache, RetryPolicy
from ebmrl.backends.openai_http import OpenAIHTTPBackend
from ebmrl.config import AnnotateSection, GenerationSection
from ebmrl.data.annotate import annotate_clips, prompt_hash
from ebmrl.data.jsonl import read_annotations
from ebmrl.frame_store import ShardedFrameStore

BIN = Path(sys.executable).parent
SETTINGS = AnnotateSection(
    max_frames=4, generation=GenerationSection(max_tokens=6, temperature=1.0)
)


def _params(tmp_path, demo_store, url, **backend):
    backend = {
        "kind": "http",
        "base_url": url,
        "model": "tiny-vlm",
        "concurrency": 2,
        "max_retries": 6,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        **backend,
    }
    path = tmp_path / "params.yaml"
    path.write_text(
        json.dumps(
            {
                "annotate": {
                    "ingest": str(demo_store["ingest"]),
                    "frames": str(demo_store["frames"]),
                    "out": str(tmp_path / "annotate"),
                    "cache": str(tmp_path / "cache"),
                    "max_frames": 4,
                    "backend": backend,
                    "generation": {"max_tokens": 6, "temperature": 1.0},
                }
            }
        )
    )
    return path


@pytest.mark.slow
def test_local_backend_describes_every_clip_once_and_caches(tmp_path, demo_store, tiny_vlm_backend):
    store = ShardedFrameStore.open(demo_store["frames"])
    clips = demo_store["clips"]
    cache = ResponseCache(tmp_path / "cache.jsonl")
    client = GenerationClient(tiny_vlm_backend, cache)
    first = annotate_clips(clips, store, client, SETTINGS, concurrency=2)
    assert [a["clip_id"] for a in first.annotations] == [c.clip_id for c in clips]
    assert first.stats["requested"] == len(clips) and not first.failures
    assert all(isinstance(a["description"], str) for a in first.annotations)
    again = annotate_clips(clips, store, GenerationClient(tiny_vlm_backend, cache), SETTINGS)
    assert again.stats["requested"] == 0 and again.annotations == first.annotations
    # Another prompt setting is another cache key: asked again.
    other = annotate_clips(clips[:1], store, client, SETTINGS.model_copy(update={"max_frames": 2}))
    assert other.stats["requested"] == 1


def test_http_backend_with_injected_503s_describes_all(tmp_path, demo_store, chat_server):
    server = chat_server(fail_rate=0.4, seed=3)
    store = ShardedFrameStore.open(demo_store["frames"])
    client = GenerationClient(
        OpenAIHTTPBackend(server.url, "tiny-vlm"),
        ResponseCache(tmp_path / "c.jsonl"),
        RetryPolicy(max_retries=10, backoff_s=0.001, max_backoff_s=0.01),
    )
    result = annotate_clips(demo_store["clips"], store, client, SETTINGS, concurrency=3)
    assert len(result.annotations) == len(demo_store["clips"]) and not result.failures
    assert result.stats["client"]["retries"] == server.stats()["injected_failures"] > 0
    assert server.stats()["max_in_flight"] <= 3


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_exactly_one_annotation_per_clip(
    tmp_path, demo_store, chat_server
):
    server = chat_server(latency_s=0.6)
    params = _params(tmp_path, demo_store, server.url)
    cache_file = tmp_path / "cache" / "responses.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(BIN / "ebmrl"), "--params", str(params), "annotate"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if cache_file.exists() and cache_file.read_bytes().count(b"\n") >= 2:
                break
            assert proc.poll() is None, "annotate finished before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    clips = demo_store["clips"]
    done = ResponseCache(cache_file)
    done_at_kill = len(done)
    done.close()
    assert 2 <= done_at_kill < len(clips)
    assert not (tmp_path / "annotate" / "annotations.jsonl").exists()
    while server.stats()["in_flight"]:  # requests the killed run left in flight
        time.sleep(0.05)
    before = server.stats()["requests"]
    assert cli.main(["--params", str(params), "annotate"]) == 0
    assert server.stats()["requests"] - before == len(clips) - done_at_kill  # nothing repeated
    annotations = [
        json.loads(x)
        for x in (tmp_path / "annotate" / "annotations.jsonl").read_text().splitlines()
    ]
    assert sorted(a["clip_id"] for a in annotations) == sorted(c.clip_id for c in clips)
    cache = ResponseCache(cache_file)
    assert len(cache) == len(clips) and cache.duplicate_lines == 0 and cache.dropped_torn_lines == 0
    assert len(cache_file.read_text().splitlines()) == len(clips)
    assert set(read_annotations(tmp_path / "annotate")) == {c.clip_id for c in clips}
    # A third run asks for nothing.
    before = server.stats()["requests"]
    assert cli.main(["--params", str(params), "annotate"]) == 0
    assert server.stats()["requests"] == before


def test_failures_are_reported_and_no_output_is_written(tmp_path, demo_store, chat_server, capsys):
    server = chat_server(fail_rate=1.0)
    params = _params(tmp_path, demo_store, server.url, max_retries=1)
    # 503 after the retries: transient (exit 75), an orchestrator tries again later.
    assert cli.main(["--params", str(params), "annotate"]) == 75
    err = capsys.readouterr().err
    assert "HTTP 503" in err and "failed" in err
    assert not (tmp_path / "annotate" / "annotations.jsonl").exists()
    assert server.stats()["requests"] == 2 * len(demo_store["clips"])  # one retry each


def test_missing_frame_store_is_named(tmp_path, demo_store, capsys):
    params = tmp_path / "p.yaml"
    params.write_text(
        f"annotate:\n  ingest: {demo_store['ingest']}\n  frames: {tmp_path / 'none'}\n  out: {tmp_path / 'o'}\n"
    )
    assert cli.main(["--params", str(params), "annotate"]) == 2
    assert "did the frames stage run" in capsys.readouterr().err


def test_prompt_hash_covers_every_setting_that_shapes_a_description():
    base = prompt_hash(SETTINGS)
    generation = SETTINGS.generation
    shaping = [
        {"max_frames": 5},
        {"max_words": 40},
        {"generation": generation.model_copy(update={"max_tokens": 7})},
        {"generation": generation.model_copy(update={"temperature": 0.5})},
        {"generation": generation.model_copy(update={"top_p": 0.9})},
        {"generation": generation.model_copy(update={"seed": 1})},
    ]
    hashes = {prompt_hash(SETTINGS.model_copy(update=change)) for change in shaping}
    assert base not in hashes and len(hashes) == len(shaping)
    # Where the files go and how requests travel do not change a description.
    elsewhere = SETTINGS.model_copy(update={"out": "elsewhere", "cache": "other_cache"})
    assert prompt_hash(elsewhere) == base
