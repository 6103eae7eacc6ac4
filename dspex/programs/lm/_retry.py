"""Retries with exponential backoff, full jitter and ``Retry-After``.

Only failures that may pass on their own are retried (``LMError.retryable``):
429, 5xx, timeouts, connection errors and malformed 200 bodies. A request the
server called wrong (400/401/403/404/422) fails at once, and so does an open
circuit: hammering a breaker that just opened defeats its purpose.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from dspex.errors import CircuitOpenError, ConfigurationError, LMError

__all__ = ["Retrier", "RetryPolicy", "parse_retry_after"]

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How often and how patiently a failed LM call is tried again.

    The delay before retry ``k`` (1-based) is drawn uniformly from
    ``[0, min(max_delay_s, base_delay_s * 2 ** (k - 1))]`` ("full jitter"), so a
    fleet of workers that failed together does not retry together. When the
    server says ``Retry-After`` the client waits that long instead, capped at
    ``max_retry_after_s``.

    Args:
        max_attempts: Calls made in total, the first one included (1 = never
            retry). None: retry until the caller gives up (its timeout or
            deadline), as a worker does with durable requests.
        base_delay_s: Upper bound of the first backoff.
        max_delay_s: Upper bound of any backoff drawn by the client.
        max_retry_after_s: Longest wait a server's ``Retry-After`` can impose.
        seed: Seed of the jitter's random generator (for reproducible tests).

    Example:
        >>> RetryPolicy(max_attempts=3, base_delay_s=0.2).max_attempts
        3
    """

    max_attempts: int | None = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0
    max_retry_after_s: float = 60.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("base_delay_s", "max_delay_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"{name} must be a finite number >= 0, got {value}")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date).

    Returns None when the header is absent or unreadable, 0 for a date in the past.

    Example:
        >>> parse_retry_after("2")
        2.0
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; be lenient with servers that omit it.
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


class Retrier:
    """Runs one attempt function under a :class:`RetryPolicy`.

    Args:
        policy: The retry policy.
        sleep: Awaitable sleep (tests may inject one; production uses asyncio's).
        on_retry: Called with (error, attempt, delay) before each backoff.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Sleep = asyncio.sleep,
        on_retry: Callable[[LMError, int, float], None] | None = None,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._on_retry = on_retry
        self._random = random.Random(policy.seed)

    def delay_for(self, attempt: int, error: LMError) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if error.retry_after is not None:
            return min(error.retry_after, self.policy.max_retry_after_s)
        ceiling = min(self.policy.max_delay_s, self.policy.base_delay_s * 2 ** (attempt - 1))
        return self._random.uniform(0.0, ceiling)

    @staticmethod
    def should_retry(error: LMError) -> bool:
        """Whether a failure of this kind is worth another attempt."""
        return error.retryable and not isinstance(error, CircuitOpenError)

    async def run(self, attempt_fn: Callable[[int], Awaitable[T]]) -> T:
        """Call ``attempt_fn(attempt)`` until it succeeds or retrying stops making sense.

        Raises:
            LMError: The last attempt's error, once attempts are exhausted or it
                is not retryable.
        """
        attempt = 1
        while True:
            try:
                return await attempt_fn(attempt)
            except LMError as error:
                limit = self.policy.max_attempts
                if (limit is not None and attempt >= limit) or not self.should_retry(error):
                    raise
                delay = self.delay_for(attempt, error)
                if self._on_retry is not None:
                    self._on_retry(error, attempt, delay)
            await self._sleep(delay)
            attempt += 1
