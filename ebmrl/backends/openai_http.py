"""Any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, hosted APIs,
``ebmrl serve``) as a backend. Frames travel as base64 data-URL images in the last user
message, in clip order.

Error mapping: 429, 5xx, timeouts and connection failures are transient (the caller
retries with backoff, honouring ``Retry-After``); any other 4xx is permanent and carries
the server's own error message.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from ebmrl.backends.base import ChatRequest, PermanentBackendError, TransientBackendError
from ebmrl.backends.images import frame_to_data_url


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: not worth parsing, our own backoff applies
        return None


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    except (ValueError, AttributeError):
        pass
    return response.text[:300] or response.reason_phrase


class OpenAIHTTPBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        image_format: str = "jpeg",
        max_concurrency: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.model_id = model
        self.image_format = image_format
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})
        key = (
            api_key
            if api_key is not None
            else (os.environ.get(api_key_env) if api_key_env else None)
        )
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of ``POST /chat/completions`` for this request."""
        last_user = max(i for i, m in enumerate(request.messages) if m.role == "user")
        messages: list[dict[str, Any]] = []
        for index, message in enumerate(request.messages):
            if index == last_user and request.frames is not None and len(request.frames):
                content: Any = [
                    {
                        "type": "image_url",
                        "image_url": {"url": frame_to_data_url(f, self.image_format)},
                    }
                    for f in request.frames
                ]
                content.append({"type": "text", "text": message.content})
            else:
                content = message.content
            messages.append({"role": message.role, "content": content})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.json_mode:
            body["response_format"] = {"type": "json_object"}
        body.update(self.extra_body)
        return body

    def generate(self, request: ChatRequest) -> str:
        url = f"{self.base_url}/chat/completions"
        try:
            response = self._client.post(url, json=self.payload(request))
        except httpx.TimeoutException as exc:
            raise TransientBackendError(f"{url}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransientBackendError(f"{url}: connection failed: {exc}") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise TransientBackendError(
                f"{url}: HTTP {status}: {_error_message(response)}", _retry_after(response)
            )
        if status >= 400:
            raise PermanentBackendError(f"{url}: HTTP {status}: {_error_message(response)}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise PermanentBackendError(
                f"{url}: reply is not a chat completion: {response.text[:200]!r}"
            ) from None
        return content if isinstance(content, str) else ""

    def close(self) -> None:
        self._client.close()
