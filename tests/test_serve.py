import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from ebmrl.backends.images import frame_to_data_url
from ebmrl.serve import BadRequest, parse_chat_request

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
