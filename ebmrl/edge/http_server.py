"""A local OpenAI-compatible chat server (``ebmrl serve``) over any ``Backend``.

``POST /v1/chat/completions`` takes the OpenAI chat format: string or block content,
images as base64 data URLs (``{"type": "image_url", "image_url": {"url": "data:..."}}``).
The images of a request are the frames of one clip, in order: they reach the model as a
video, with the last user message. ``GET /v1/models``, ``GET /health`` and ``GET /stats``
(request counters, for tests and benchmarks) complete it.

Bounded: a request body over ``max_body_bytes`` is refused with 413 before it is read,
a prompt over the model's context with 400 (the backend checks it before generating),
and at most ``max_queue`` completions are admitted at once (running or waiting for the
model); more get 503 with ``Retry-After`` at once, while health, model and stats requests
keep being answered. Connections beyond ``max_connections`` get 503 too, and an idle
keep-alive connection is closed after ``idle_timeout_s``, so threads stay bounded.

It can inject faults for retry tests: a fraction of requests answered with an error
status (503 by default) and a fixed added latency. Only the standard library serves
HTTP (``ThreadingHTTPServer``: one thread per connection, so injected latency overlaps
across concurrent clients while the model itself runs one request at a time).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ebmrl.backends.base import Backend, BackendError, ChatRequest, Message
from ebmrl.backends.images import ImageDecodeError, data_url_to_frame, stack_frames

MAX_BODY_BYTES = 16 * 1024 * 1024  # default limit: a clip's frames as JPEG fit many times
MAX_QUEUE = 8  # completions admitted at once (one runs, the rest wait for the model)
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 30.0


class BadRequest(ValueError):
    """The request body is not a chat completion request we can serve (HTTP 400)."""


@dataclass
class Faults:
    """Injected misbehaviour: ``fail_rate`` of requests get ``fail_status``; every request
    waits ``latency_s`` first. Decisions come from a seeded generator (reproducible)."""

    fail_rate: float = 0.0
    fail_status: int = 503
    latency_s: float = 0.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not 0 <= self.fail_rate <= 1:
            raise ValueError(f"fail_rate must be in [0, 1], got {self.fail_rate}")
        if self.latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")
        if not 400 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be an HTTP error status, got {self.fail_status}")
        self._rng = random.Random(self.seed)

    def should_fail(self) -> bool:
        with self._lock:
            return self._rng.random() < self.fail_rate


def _text_of(content: Any, where: str, images: list[str]) -> str:
    """Text of one message's content; image URLs are collected into ``images``."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of blocks")
    texts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict):
            raise BadRequest(f"{where}.content[{i}] must be an object")
        kind = block.get("type")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise BadRequest(f"{where}.content[{i}].text must be a string")
            texts.append(block["text"])
        elif kind == "image_url":
            image = block.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise BadRequest(f"{where}.content[{i}].image_url.url must be a string")
            images.append(url)
        else:
            raise BadRequest(
                f"{where}.content[{i}].type {kind!r} is not supported (text, image_url)"
            )
    return "\n".join(texts)


def parse_chat_request(body: Any, max_tokens_limit: int = 4096) -> ChatRequest:
    """Validate an OpenAI chat request body into a ``ChatRequest`` (``BadRequest`` if not)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadRequest("'messages' must be a non-empty list")
    if body.get("stream"):
        raise BadRequest("streaming is not supported by this server (use stream: false)")
    if body.get("n", 1) != 1:
        raise BadRequest("only n = 1 is supported")
    images: list[str] = []
    messages = []
    for i, raw in enumerate(raw_messages):
        if not isinstance(raw, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = raw.get("role")
        if role not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}].role must be system, user or assistant, got {role!r}")
        messages.append(Message(role, _text_of(raw.get("content"), f"messages[{i}]", images)))
    if messages[-1].role != "user":
        raise BadRequest("the last message must be the user's")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 256))
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= max_tokens_limit
    ):
        raise BadRequest(
            f"max_tokens must be an integer in [1, {max_tokens_limit}], got {max_tokens!r}"
        )
    settings = {}
    for name, default, low, high in (("temperature", 1.0, 0.0, 5.0), ("top_p", 1.0, 0.0, 1.0)):
        value = body.get(name, default)
        if value is None:
            value = default
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            raise BadRequest(f"{name} must be a number in [{low}, {high}], got {value!r}")
        settings[name] = float(value)
    if settings["top_p"] == 0:
        raise BadRequest("top_p must be > 0")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise BadRequest(f"seed must be an integer, got {seed!r}")
    frames = None
    if images:
        try:
            frames = stack_frames([data_url_to_frame(url) for url in images])
        except ImageDecodeError as exc:
            raise BadRequest(str(exc)) from None
    response_format = body.get("response_format") or {}
    return ChatRequest(
        messages=tuple(messages),
        frames=frames,
        max_tokens=max_tokens,
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        seed=seed,
        json_mode=isinstance(response_format, dict)
        and response_format.get("type") == "json_object",
    )


class ChatServer(ThreadingHTTPServer):
    """An HTTP server bound to ``host:port`` (port 0: any free port) serving ``backend``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        backend: Backend,
        *,
        model_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        max_tokens_limit: int = 4096,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_queue: int = MAX_QUEUE,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        verbose: bool = False,
    ):
        for name, value in (
            ("max_body_bytes", max_body_bytes),
            ("max_queue", max_queue),
            ("max_connections", max_connections),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        super().__init__((host, port), _Handler)
        self.backend = backend
        self.model_name = model_name or backend.model_id
        self.faults = faults or Faults()
        self.max_tokens_limit = max_tokens_limit
        self.max_body_bytes = max_body_bytes
        self.max_queue = max_queue
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.verbose = verbose
        self._lock = threading.Lock()
        self._admitted = threading.BoundedSemaphore(max_queue)
        self._connections = 0
        self.counters = {
            "requests": 0,
            "completed": 0,
            "injected_failures": 0,
            "bad_requests": 0,
            "errors": 0,
            "too_large": 0,
            "queue_full": 0,
            "refused_connections": 0,
            "in_flight": 0,
            "max_in_flight": 0,
        }
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def count(self, name: str, delta: int = 1) -> None:
        with self._lock:
            self.counters[name] += delta
            if name == "in_flight":
                self.counters["max_in_flight"] = max(
                    self.counters["max_in_flight"], self.counters["in_flight"]
                )

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def admit(self) -> bool:
        """A place among the ``max_queue`` completions admitted at once, if one is free."""
        return self._admitted.acquire(blocking=False)

    def release(self) -> None:
        self._admitted.release()

    # Connections: one thread each, at most ``max_connections`` of them.
    def process_request(self, request, client_address) -> None:
        with self._lock:
            full = self._connections >= self.max_connections
            if not full:
                self._connections += 1
        if full:
            self.count("refused_connections")
            _refuse_connection(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections -= 1

    def start(self) -> ChatServer:
        """Serve from a background thread (tests, benchmarks); ``stop()`` ends it."""
        self._thread = threading.Thread(target=self.serve_forever, name="ebmrl-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _refuse_connection(sock: socket.socket) -> None:
    """A whole 503 response written straight to a connection that gets no thread."""
    body = json.dumps(
        {"error": {"message": "too many connections", "type": "overloaded", "code": 503}}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        sock.settimeout(2)
        sock.sendall(head.encode() + body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    server: ChatServer

    def setup(self) -> None:
        # An idle keep-alive connection must not hold its thread forever.
        self.timeout = self.server.idle_timeout_s
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/health", "/v1/health"):
            self._send(200, {"status": "ok"})
        elif path == "/v1/models":
            model = {"id": self.server.model_name, "object": "model", "owned_by": "ebmrl"}
            self._send(200, {"object": "list", "data": [model]})
        elif path in ("/stats", "/v1/stats"):
            self._send(200, self.server.stats())
        else:
            self._error(404, f"no such endpoint: GET {path}", "not_found")

    def _refuse_body(self, length: int) -> None:
        """413 without reading the body; then a lingering close, so that the client,
        still sending, reads the answer instead of a connection reset."""
        server = self.server
        server.count("too_large")
        self.close_connection = True
        self._error(
            413,
            f"request body of {length} bytes is over the limit of {server.max_body_bytes} bytes",
            "invalid_request_error",
        )
        deadline = time.monotonic() + 5  # a bounded drain, however much the client sends
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1)
            while self.connection.recv(1 << 16) and time.monotonic() < deadline:
                pass

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._error(400, "bad request: invalid Content-Length", "invalid_request_error")
            return
        server = self.server
        if length > server.max_body_bytes:
            self._refuse_body(length)
            return
        raw = self.rfile.read(length) if length else b""
        if path != "/v1/chat/completions":
            self._error(404, f"no such endpoint: POST {path}", "not_found")
            return
        server.count("requests")
        if not server.admit():
            server.count("queue_full")
            self._send(
                503,
                {
                    "error": {
                        "message": f"server busy: {server.max_queue} request(s) already queued",
                        "type": "overloaded",
                        "code": 503,
                    }
                },
                headers={"Retry-After": "1"},
            )
            return
        server.count("in_flight")
        try:
            self._complete(raw)
        finally:
            server.count("in_flight", -1)
            server.release()

    def _complete(self, raw: bytes) -> None:
        server = self.server
        try:
            request = parse_chat_request(json.loads(raw or b"null"), server.max_tokens_limit)
        except (BadRequest, ValueError) as exc:  # json errors and ChatRequest checks too
            server.count("bad_requests")
            self._error(400, f"bad request: {exc}", "invalid_request_error")
            return
        if server.faults.latency_s:
            time.sleep(server.faults.latency_s)
        if server.faults.should_fail():
            server.count("injected_failures")
            status = server.faults.fail_status
            self._error(status, f"injected failure ({HTTPStatus(status).phrase})", "injected")
            return
        try:
            text = server.backend.generate(request)
        except BackendError as exc:
            server.count("errors")
            self._error(500 if exc.retryable else 400, str(exc), "server_error")
            return
        except Exception as exc:  # a model crash must not kill the server thread silently
            server.count("errors")
            self._error(500, f"{type(exc).__name__}: {exc}", "server_error")
            return
        server.count("completed")
        count = getattr(server.backend, "count_tokens", None)
        completion_tokens = count(text) if count else 0
        prompt_tokens = count("\n".join(m.content for m in request.messages)) if count else 0
        self._send(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": server.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length"
                        if completion_tokens >= request.max_tokens
                        else "stop",
                    }
                ],
                # Text tokens only: vision tokens are not counted.
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )
