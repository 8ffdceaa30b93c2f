"""Text/vision generation backends: a local transformers VLM or any OpenAI-compatible
``/v1/chat/completions`` endpoint, behind one small interface (``Backend``).

``make_backend(section, models)`` builds the one a params section asks for;
``GenerationClient`` adds the response cache, retries and counts on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ebmrl.backends.base import (
    Backend,
    BackendError,
    ChatRequest,
    Message,
    PermanentBackendError,
    TransientBackendError,
)
from ebmrl.backends.cache import CacheError, ResponseCache
from ebmrl.backends.client import GenerationClient, cache_key, map_concurrent
from ebmrl.backends.retry import RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from ebmrl.config import BackendSection, EvalSystemSection, ModelsSection, RequestsSection

__all__ = [
    "Backend",
    "BackendError",
    "CacheError",
    "ChatRequest",
    "GenerationClient",
    "Message",
    "PermanentBackendError",
    "ResponseCache",
    "RetryPolicy",
    "TransientBackendError",
    "cache_key",
    "call_with_retries",
    "make_backend",
    "map_concurrent",
    "retry_policy",
    "system_backend",
]


def make_backend(section: BackendSection, models: ModelsSection) -> Backend:
    """The backend a params ``backend:`` block describes (model null: ``models.vlm``)."""
    if section.kind == "local":
        from ebmrl.backends.local import LocalVLMBackend

        return LocalVLMBackend(
            section.model or models.vlm,
            dtype=models.dtype,
            device=models.device,
            attn_implementation=models.attn_implementation,
            torch_threads=section.torch_threads,
        )
    from ebmrl.backends.openai_http import OpenAIHTTPBackend

    assert section.base_url is not None  # checked by BackendSection
    return OpenAIHTTPBackend(
        section.base_url,
        section.model or models.vlm,
        api_key_env=section.api_key_env,
        timeout_s=section.timeout_s,
        image_format=section.image_format,
        max_concurrency=section.concurrency,
    )


def system_backend(
    system: EvalSystemSection,
    models: ModelsSection,
    requests: RequestsSection | None = None,
    torch_threads: int | None = None,
) -> Backend:
    """An evaluated system's generator: its model in this process, or the endpoint serving
    it, reached with the ``requests`` settings (timeout, concurrency, API key)."""
    from ebmrl.config import BackendSection

    return make_backend(
        BackendSection(
            **(requests.model_dump() if requests is not None else {}),
            kind="http" if system.base_url else "local",
            model=system.model,
            base_url=system.base_url,
            torch_threads=torch_threads,
        ),
        models,
    )


def retry_policy(section: RequestsSection) -> RetryPolicy:
    return RetryPolicy(
        max_retries=section.max_retries,
        backoff_s=section.backoff_s,
        max_backoff_s=section.max_backoff_s,
    )


def concurrency(section: RequestsSection, backend: Backend) -> int:
    """Requests in flight: the section's bound, never more than the backend can take."""
    limit = getattr(backend, "max_concurrency", None)
    return max(1, min(section.concurrency, limit) if limit else section.concurrency)
