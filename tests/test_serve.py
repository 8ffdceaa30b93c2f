import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from ebmrl.backends.images import frame_to_data_url
from ebmrl.edge.http_server import BadRequest, parse_chat_request

BIN = Path(sys.executable).parent


def _chat(url, body):
    return httpx.post(f"{url}/chat/completions", json=body, timeout=30)


def test_endpoints_and_openai_reply_shape(chat_server):
    server = chat_server()
    root = server.url.removesuffix("/v1")
    assert httpx.get(f"{root}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/models").json()["data"][0]["id"] == "tiny-vlm"
    frame = np.full((32, 48, 3), 200, np.uint8)
    body = {
        "model": "tiny-vlm",
        "messages": [
            {"role": "system", "content": "You describe clips."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": frame_to_data_url(frame, "png")}},
                    {"type": "image_url", "image_url": {"url": frame_to_data_url(frame)}},
                    {"type": "text", "text": "What do you see?"},
                ],
            },
        ],
        "max_tokens": 5,
        "temperature": 1.0,
        "seed": 4,
    }
    reply = _chat(server.url, body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["object"] == "chat.completion" and data["model"] == "tiny-vlm"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(data["choices"][0]["message"]["content"], str)
    assert 0 < data["usage"]["completion_tokens"] <= 5
    assert _chat(server.url, body).json()["choices"][0]["message"] == data["choices"][0]["message"]
    assert httpx.get(f"{root}/stats").json()["completed"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"messages": []}, "non-empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "last message"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": True}, "streaming"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                    }
                ]
            },
            "data URL",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,AAAA"},
                            }
                        ],
                    }
                ]
            },
            "cannot decode",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "not supported"),
    ],
)
def test_bad_requests_are_named(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_chat_request(body)


def test_bad_request_over_http_is_400_with_message(chat_server):
    server = chat_server()
    reply = httpx.post(f"{server.url}/chat/completions", content=b"{not json", timeout=10)
    assert reply.status_code == 400 and "bad request" in reply.json()["error"]["message"]
    assert httpx.post(f"{server.url}/nothing", json={}).status_code == 404


@pytest.mark.slow
def test_injected_failures_and_latency(chat_server):
    server = chat_server(fail_rate=0.3, latency_s=0.01, seed=0)
    codes = [
        _chat(
            server.url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        ).status_code
        for _ in range(40)
    ]
    failures = codes.count(503)
    assert set(codes) <= {200, 503} and 4 <= failures <= 20
    assert server.stats()["injected_failures"] == failures


@pytest.mark.slow
def test_ebmrl_serve_command(tmp_path, tiny_models):
    params = tmp_path / "params.yaml"
    params.write_text(f"models:\n  vlm: {tiny_models['vlm']}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            str(BIN / "ebmrl"),
            "--params",
            str(params),
            "serve",
            "--port",
            "0",
            "--model-name",
            "tiny",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        line = ""
        while "serving" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "server exited early"
        url = line.split(" on ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"] == "tiny"
        reply = _chat(url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert reply.status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


# --------------------------------------------------------------------- bounds (issue 12)
class GateBackend:
    """A backend whose completions wait until ``gate`` is set: a "long" request."""

    model_id = "gate"
    max_concurrency = 1

    def __init__(self):
        import threading

        self.gate = threading.Event()
        self.lock = threading.Lock()  # one completion at a time, like a local model
        self.calls = 0

    def generate(self, request):
        with self.lock:
            self.calls += 1
            assert self.gate.wait(60), "the test never opened the gate"
            return "done"

    def close(self):
        pass


def _hi(max_tokens=2):
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}


def test_a_prompt_over_the_models_context_is_refused_and_serving_goes_on(chat_server, monkeypatch):
    """5 MB of text is refused from its length alone (never tokenized, never generated);
    a prompt just over the tiny model's context is refused after tokenizing; both 400."""
    server = chat_server()
    model, _ = server.backend._model_and_processor()

    def must_not_generate(*args, **kwargs):
        raise AssertionError("generate() called for a prompt over the context")

    monkeypatch.setattr(model, "generate", must_not_generate)
    context, _ = server.backend._context_limits()
    for text in ("x" * 5_000_000, "word " * (context + 10)):
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": 4}
        reply = httpx.post(f"{server.url}/chat/completions", json=body, timeout=120)
        assert reply.status_code == 400, reply.text[:500]
        assert f"context of {context} tokens" in reply.json()["error"]["message"]
    monkeypatch.undo()
    assert _chat(server.url, _hi()).status_code == 200  # the server still serves


def test_the_local_backend_refuses_the_same_prompts(tiny_vlm_backend):
    """annotate, synthesize and the judge use the backend directly: the same limit."""
    from ebmrl.backends.base import ChatRequest, Message, PermanentBackendError

    context, _ = tiny_vlm_backend._context_limits()
    long = ChatRequest(messages=(Message("user", "word " * context),), max_tokens=8)
    with pytest.raises(PermanentBackendError, match=f"context of {context} tokens"):
        tiny_vlm_backend.generate(long)


def test_a_body_over_the_limit_is_413(tiny_vlm_backend):
    from ebmrl.edge.http_server import ChatServer

    with ChatServer(tiny_vlm_backend, max_body_bytes=4096) as server:
        big = {"messages": [{"role": "user", "content": "x" * 50_000}], "max_tokens": 2}
        reply = httpx.post(f"{server.url}/chat/completions", json=big, timeout=30)
        assert reply.status_code == 413 and "4096" in reply.json()["error"]["message"]
        assert _chat(server.url, _hi()).status_code == 200
        assert server.stats()["too_large"] == 1 and server.stats()["completed"] == 1


def test_a_full_queue_answers_503_while_health_and_queued_requests_are_served():
    import threading
    import time

    from ebmrl.edge.http_server import ChatServer

    backend = GateBackend()
    with ChatServer(backend, max_queue=2) as server:
        codes: list[int] = []

        def post():
            codes.append(_chat(server.url, _hi()).status_code)

        workers = [threading.Thread(target=post) for _ in range(2)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 30
        while server.stats()["in_flight"] < 2:  # one running, one waiting for the model
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.02)
        busy = _chat(server.url, _hi())
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        root = server.url.removesuffix("/v1")
        assert httpx.get(f"{root}/health", timeout=5).json() == {"status": "ok"}
        backend.gate.set()
        for worker in workers:
            worker.join(30)
        assert codes == [200, 200] and server.stats()["queue_full"] == 1
        assert _chat(server.url, _hi()).status_code == 200  # room again


def test_connections_over_the_limit_get_503():
    import socket

    from ebmrl.edge.http_server import ChatServer

    with ChatServer(GateBackend(), max_connections=2) as server:
        host, port = server.server_address[:2]
        idle = [socket.create_connection((host, port)) for _ in range(2)]
        try:
            import time

            deadline = time.monotonic() + 10
            reply = b""
            while b" 503 " not in reply:
                assert time.monotonic() < deadline, reply
                with socket.create_connection((host, port), timeout=5) as extra:
                    extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    reply = extra.recv(4096)
            assert server.stats()["refused_connections"] >= 1
        finally:
            for sock in idle:
                sock.close()
