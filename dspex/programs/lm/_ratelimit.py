"""An async token bucket on requests per minute and tokens per minute.

Providers meter both, so a call must fit in two buckets at once: one request
and an *estimate* of its tokens (prompt characters / 4 + the completion
budget). The estimate is settled against the real usage once the answer
arrives, so a run of short answers frees budget for the next callers.

Waiters are served strictly first in, first out: a large request at the head
is not overtaken by small ones behind it, so nobody starves. There is no
polling loop and no background task: when the head cannot be served, one
timer is armed for the moment it can, and that callback wakes as many waiters
as the buckets then allow.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dspex.errors import ConfigurationError
from dspex.programs.lm.types import LMRequest

__all__ = ["RateLimit", "TokenBucketLimiter", "estimate_request_tokens"]

# Slack added to every computed wait so float rounding never makes a timer
# fire a hair early and re-arm itself for a nanosecond.
_EPSILON_S = 1e-6


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimit:
    """Request and token budgets for one LM client.

    Each budget is a token bucket refilled continuously at ``rate / 60`` per
    second. ``burst_s`` sets its capacity: how many seconds' worth of budget
    may be spent at once. The default of one second keeps traffic smooth,
    which is what providers that quantise per-minute limits into shorter
    windows expect. A single request larger than the whole capacity is let
    through once the bucket is full (and puts it in debt), never blocked forever.

    Args:
        requests_per_minute: Requests per minute, or None for no request limit.
        tokens_per_minute: Prompt + completion tokens per minute, or None.
        burst_s: Seconds of budget the buckets hold.

    Example:
        >>> RateLimit(requests_per_minute=600, tokens_per_minute=200_000).requests_per_minute
        600
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number, got {value}")
        if not (math.isfinite(self.burst_s) and self.burst_s > 0):
            raise ConfigurationError(f"burst_s must be a positive number, got {self.burst_s}")


def estimate_request_tokens(request: LMRequest, assumed_completion: int) -> int:
    """A cheap upper-bound guess of a call's tokens: prompt chars / 4 + completion budget.

    ``assumed_completion`` stands in for the budget when the call sets none;
    the guess is settled against the real usage once the answer arrives.
    """
    chars = sum(len(message.content) for message in request.messages)
    if request.response_format is not None:
        chars += len(json.dumps(request.response_format.json_schema))
    completion = request.max_tokens if request.max_tokens is not None else assumed_completion
    return max(1, math.ceil(chars / 4) + completion * request.n)


class _Bucket:
    """One continuously refilled bucket; the level may go negative (debt)."""

    __slots__ = ("capacity", "level", "rate_per_s", "updated")

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.rate_per_s = per_minute / 60.0
        # Always room for at least one whole request.
        self.capacity = max(self.rate_per_s * burst_s, 1.0)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
            self.updated = now

    def wait_s(self, amount: float) -> float:
        """Seconds until ``amount`` (or a full bucket, if it is larger) is available."""
        needed = min(amount, self.capacity)
        if self.level >= needed:
            return 0.0
        return (needed - self.level) / self.rate_per_s + _EPSILON_S

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[None]
    tokens: int


class TokenBucketLimiter:
    """FIFO-fair async limiter over a :class:`RateLimit`.

    Args:
        limit: The budgets.
        clock: Monotonic clock in seconds (injectable for tests).

    Example:
        >>> limiter = TokenBucketLimiter(RateLimit(requests_per_minute=60))
        >>> limiter.waiting
        0
    """

    def __init__(self, limit: RateLimit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        now = clock()
        self._requests = (
            _Bucket(limit.requests_per_minute, limit.burst_s, now)
            if limit.requests_per_minute is not None
            else None
        )
        self._tokens = (
            _Bucket(limit.tokens_per_minute, limit.burst_s, now)
            if limit.tokens_per_minute is not None
            else None
        )
        self._queue: deque[_Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        """Callers queued for budget right now (for metrics)."""
        return sum(1 for waiter in self._queue if not waiter.future.done())

    async def acquire(self, tokens: int) -> None:
        """Wait, in arrival order, until one request and ``tokens`` tokens fit."""
        if self._requests is None and self._tokens is None:
            return
        self._loop = asyncio.get_running_loop()
        if not self._queue and self._try_take(tokens):
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.append(_Waiter(future, tokens))
        if self._timer is None:
            self._serve()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted, but our caller gave up before using it: return the budget.
                self.refund(tokens, request=True)
            else:
                # Cancelled while queued; the entry is skipped when reached, and
                # the callers behind it should not wait on its behalf.
                self._kick()
            raise

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once a call's real usage is known."""
        if self._tokens is None or estimated == actual:
            return
        self._tokens.refill(self._clock())
        if actual > estimated:
            self._tokens.level -= actual - estimated
        else:
            self._tokens.give_back(estimated - actual)
            self._kick()

    def refund(self, tokens: int, *, request: bool = False) -> None:
        """Give back budget that was taken but not spent at the provider."""
        now = self._clock()
        if self._tokens is not None:
            self._tokens.refill(now)
            self._tokens.give_back(tokens)
        if request and self._requests is not None:
            self._requests.refill(now)
            self._requests.give_back(1)
        self._kick()

    def close(self) -> None:
        """Disarm the timer and cancel every queued waiter."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.cancel()

    # -- internals -----------------------------------------------------------------

    def _wait_s(self, tokens: int) -> float:
        wait = 0.0
        if self._requests is not None:
            wait = self._requests.wait_s(1)
        if self._tokens is not None:
            wait = max(wait, self._tokens.wait_s(tokens))
        return wait

    def _try_take(self, tokens: int) -> bool:
        now = self._clock()
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.refill(now)
        if self._wait_s(tokens) > 0:
            return False
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= tokens
        return True

    def _kick(self) -> None:
        """Serve now instead of at the armed time: budget came back early."""
        if self._queue and self._loop is not None and not self._loop.is_closed():
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._serve()

    def _serve(self) -> None:
        self._timer = None
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled while waiting
                self._queue.popleft()
                continue
            if not self._try_take(head.tokens):
                # acquire() sets the loop before it queues anyone.
                if self._loop is not None:
                    self._timer = self._loop.call_later(self._wait_s(head.tokens), self._serve)
                return
            self._queue.popleft()
            head.future.set_result(None)
