"""Calling a backend for many items: cache first, retries on transient errors, bounded
concurrency, and counts of what happened (for stage reports and benchmarks)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ebmrl.backends.base import Backend, ChatRequest, TransientBackendError
from ebmrl.backends.cache import ResponseCache
from ebmrl.backends.retry import RetryPolicy, call_with_retries

T = TypeVar("T")
R = TypeVar("R")


def cache_key(*parts: str) -> str:
    """A stable key from its parts (e.g. clip hash, prompt hash, model id)."""
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class ClientStats:
    requests: int = 0  # calls that reached the backend (retries included)
    completed: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    retry_reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "failures": self.failures,
            "retry_reasons": dict(self.retry_reasons),
        }


def _reason(error: TransientBackendError) -> str:
    text = str(error)
    marker = "HTTP "
    if marker in text:
        return text[text.index(marker) : text.index(marker) + 8]
    return "timeout" if "timed out" in text else "connection"


class GenerationClient:
    """``generate(request, key)``: cached result if any, else the backend (with retries),
    the result then appended to the cache at once. Safe to share between threads."""

    def __init__(
        self,
        backend: Backend,
        cache: ResponseCache | None = None,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.backend = backend
        self.cache = cache
        self.policy = policy or RetryPolicy()
        self.stats = ClientStats()
        self._sleep = sleep
        self._lock = threading.Lock()

    def key_for(self, request: ChatRequest) -> str:
        return cache_key(self.backend.model_id, request.fingerprint())

    def cached(self, key: str) -> dict[str, Any] | None:
        return self.cache.get(key) if self.cache is not None else None

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _on_retry(self, number: int, error: TransientBackendError, delay: float) -> None:
        with self._lock:
            self.stats.retries += 1
            self.stats.retry_reasons[_reason(error)] += 1

    def _attempt(self, request: ChatRequest) -> str:
        self._count(requests=1)
        return self.backend.generate(request)

    def generate(self, request: ChatRequest, key: str | None = None, **meta: Any) -> str:
        key = key or self.key_for(request)
        hit = self.cached(key)
        if hit is not None:
            self._count(cache_hits=1)
            return hit["text"]
        try:
            text = call_with_retries(
                lambda: self._attempt(request),
                self.policy,
                on_retry=self._on_retry,
                sleep=self._sleep,
            )
        except Exception:
            self._count(failures=1)
            raise
        self._count(completed=1)
        if self.cache is not None:
            self.cache.put(key, text=text, model_id=self.backend.model_id, **meta)
        return text


@dataclass
class Outcome:
    item: Any
    result: Any = None
    error: BaseException | None = None


def map_concurrent(
    fn: Callable[[T], R],
    items: Sequence[T] | Iterable[T],
    *,
    concurrency: int,
    desc: str | None = None,
    progress: bool = True,
) -> list[Outcome]:
    """Apply ``fn`` to every item with at most ``concurrency`` calls in flight.

    Returns one ``Outcome`` per item, in input order; an item's exception is captured
    in its outcome (the others still run), so one bad item never loses finished work.
    """
    items = list(items)
    outcomes = [Outcome(item) for item in items]
    if not items:
        return outcomes
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="item")
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
        for future in as_completed(futures):
            outcome = outcomes[futures[future]]
            try:
                outcome.result = future.result()
            except Exception as exc:  # captured per item: the caller reports them
                outcome.error = exc
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return outcomes
