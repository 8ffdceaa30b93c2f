import threading
import time

import numpy as np
import pytest

from ebmrl.backends import (
    ChatRequest,
    GenerationClient,
    PermanentBackendError,
    ResponseCache,
    RetryPolicy,
    TransientBackendError,
    call_with_retries,
)
from ebmrl.backends.openai_http import OpenAIHTTPBackend

FAST = RetryPolicy(max_retries=8, backoff_s=0.001, max_backoff_s=0.01)


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after():
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=5.0, jitter=0.0)
    assert [policy.delay(i) for i in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(0, retry_after_s=3.0) == 3.0
    assert policy.delay(0, retry_after_s=60.0) == 5.0  # capped
    jittered = RetryPolicy(backoff_s=1.0, jitter=0.5)
    assert all(0.5 <= jittered.delay(0) <= 1.0 for _ in range(50))


def test_only_transient_errors_are_retried():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientBackendError("HTTP 503")
        return "ok"

    assert call_with_retries(flaky, RetryPolicy(max_retries=5), sleep=waits.append) == "ok"
    assert len(calls) == 3 and len(waits) == 2

    def refused():
        calls.append(1)
        raise PermanentBackendError("HTTP 400")

    calls.clear()
    with pytest.raises(PermanentBackendError):
        call_with_retries(refused, RetryPolicy(max_retries=5), sleep=waits.append)
    assert len(calls) == 1

    def always_busy():
        raise TransientBackendError("HTTP 429")

    with pytest.raises(TransientBackendError):
        call_with_retries(always_busy, RetryPolicy(max_retries=2), sleep=lambda s: None)


def test_request_fingerprint_covers_messages_frames_and_settings():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    base = ChatRequest.simple("describe", system="sys", frames=frames, seed=1)
    assert (
        base.fingerprint()
        == ChatRequest.simple("describe", system="sys", frames=frames.copy(), seed=1).fingerprint()
    )
    assert (
        base.fingerprint()
        != ChatRequest.simple("describe", system="sys", frames=frames, seed=2).fingerprint()
    )
    other = frames.copy()
    other[0, 0, 0, 0] = 1
    assert (
        base.fingerprint()
        != ChatRequest.simple("describe", system="sys", frames=other, seed=1).fingerprint()
    )
    with pytest.raises(ValueError, match="uint8"):
        ChatRequest.simple("x", frames=np.zeros((2, 8, 8, 3), np.float32))


def test_cache_drops_a_torn_last_line_and_keeps_first_of_duplicates(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"key": "a", "text": "first"}\n{"key": "a", "text": "second"}\n{"key": "b", "text": "ok"}\n{"key": "c", "te'
    )
    cache = ResponseCache(path)
    assert cache.get("a")["text"] == "first" and cache.get("b")["text"] == "ok" and "c" not in cache
    assert cache.dropped_torn_lines == 1 and cache.duplicate_lines == 1
    cache.put("c", text="new")
    cache.close()
    reopened = ResponseCache(path)
    assert reopened.get("c")["text"] == "new" and len(reopened) == 3
    assert reopened.dropped_torn_lines == 0  # the torn bytes were trimmed, not glued to "c"


def test_cache_concurrent_appends_are_whole_lines(tmp_path):
    cache = ResponseCache(tmp_path / "c.jsonl", fsync=False)
    threads = [
        threading.Thread(
            target=lambda i=i: [cache.put(f"{i}-{j}", text="x" * 5000) for j in range(50)]
        )
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    again = ResponseCache(tmp_path / "c.jsonl")
    assert len(again) == 200 and again.skipped_corrupt_lines == 0


def test_local_backend_generates_with_and_without_frames(tiny_vlm_backend):
    frames = np.random.default_rng(0).integers(0, 255, (3, 56, 56, 3), dtype=np.uint8)
    request = ChatRequest.simple(
        "Describe the clip.", frames=frames, max_tokens=8, temperature=1.0, seed=0
    )
    first = tiny_vlm_backend.generate(request)
    assert isinstance(first, str) and first == tiny_vlm_backend.generate(request)  # seeded
    text_only = tiny_vlm_backend.generate(
        ChatRequest.simple("Hello", max_tokens=4, temperature=1.0, seed=1)
    )
    assert isinstance(text_only, str)
    assert "@" in tiny_vlm_backend.model_id  # a local folder is fingerprinted


def test_http_backend_round_trip_with_frames(chat_server):
    server = chat_server()
    backend = OpenAIHTTPBackend(server.url, "tiny-vlm", timeout_s=30)
    frames = np.full((2, 40, 40, 3), 128, np.uint8)
    text = backend.generate(
        ChatRequest.simple("Describe.", frames=frames, max_tokens=6, temperature=1.0, seed=3)
    )
    assert isinstance(text, str)
    assert server.stats()["completed"] == 1
    body = backend.payload(ChatRequest.simple("Describe.", frames=frames))
    images = [b for b in body["messages"][-1]["content"] if b["type"] == "image_url"]
    assert len(images) == 2 and images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    backend.close()


@pytest.mark.slow
def test_retries_happen_on_injected_503(chat_server):
    server = chat_server(fail_rate=0.5, seed=1)
    client = GenerationClient(OpenAIHTTPBackend(server.url, "tiny-vlm"), None, FAST)
    for i in range(8):
        client.generate(ChatRequest.simple(f"line {i}", max_tokens=2, temperature=1.0, seed=i))
    stats = server.stats()
    assert stats["completed"] == 8
    assert client.stats.retries == stats["injected_failures"] > 0
    assert client.stats.retry_reasons == {"HTTP 503": stats["injected_failures"]}


def test_no_retry_on_400(chat_server):
    server = chat_server()
    client = GenerationClient(OpenAIHTTPBackend(server.url, "tiny-vlm"), None, FAST)
    with pytest.raises(PermanentBackendError, match="max_tokens"):
        client.generate(ChatRequest.simple("too long", max_tokens=100_000))
    assert server.stats()["requests"] == 1 and server.stats()["bad_requests"] == 1
    assert client.stats.retries == 0 and client.stats.failures == 1


def test_timeouts_and_refused_connections_are_transient(chat_server):
    server = chat_server(latency_s=0.5)
    slow = OpenAIHTTPBackend(server.url, "tiny-vlm", timeout_s=0.1)
    client = GenerationClient(slow, None, RetryPolicy(max_retries=1, backoff_s=0.001))
    started = time.perf_counter()
    with pytest.raises(TransientBackendError, match="timed out"):
        client.generate(ChatRequest.simple("hi", max_tokens=2))
    assert client.stats.requests == 2 and time.perf_counter() - started < 2
    closed = chat_server()
    url = closed.url
    closed.stop()
    with pytest.raises(TransientBackendError, match="connection"):
        OpenAIHTTPBackend(url, "m", timeout_s=2).generate(ChatRequest.simple("hi"))
