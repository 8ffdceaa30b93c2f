"""Retries with exponential backoff for transient backend errors (429, 5xx, timeouts).

Only ``TransientBackendError`` is retried; anything else (a 400, a bug) propagates at
once, because repeating it cannot succeed and only hides the cause.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ebmrl.backends.base import TransientBackendError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 1.0  # first delay; doubles each retry
    max_backoff_s: float = 60.0
    jitter: float = 0.5  # delays are scaled by a random factor in [1 - jitter, 1]

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff delays must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(
        self, retry: int, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry`` (0-based).

        A server's ``Retry-After`` is honoured (capped at ``max_backoff_s``) when it asks
        for longer than our own schedule.
        """
        base = min(self.max_backoff_s, self.backoff_s * (2**retry))
        scale = 1.0 - self.jitter * (rng or random).random()
        wait = base * scale
        if retry_after_s is not None and retry_after_s > wait:
            wait = min(self.max_backoff_s, retry_after_s)
        return wait


def call_with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[int, TransientBackendError, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call``; on a transient error wait and try again, at most ``max_retries`` times.

    ``on_retry(retry_number, error, delay_s)`` is called before each wait (for stats and
    logs). The last transient error is re-raised when the retries are used up.
    """
    retry = 0
    while True:
        try:
            return call()
        except TransientBackendError as exc:
            if retry >= policy.max_retries:
                raise
            wait = policy.delay(retry, exc.retry_after_s)
            if on_retry is not None:
                on_retry(retry + 1, exc, wait)
            sleep(wait)
            retry += 1
