"""Circuit breakers per provider and model, on top of purgatory.

purgatory keeps the state machine (closed → open after N consecutive
failures → half-open after the recovery timeout → closed on success, open
again on failure). Two things are added here:

* **Bounded probing.** purgatory lets *every* call through while half-open,
  so a recovering provider would take the full backlog at once. Here at most
  ``half_open_max_probes`` calls probe concurrently; the rest fail fast.
* **What counts as a failure.** Only signs that the provider is down: 5xx,
  timeouts and connection errors. A 4xx is the caller's problem (or a rate
  limit, which the limiter and retries handle); it proves the server answers,
  so it counts as a success. A cancelled call is not reported at all.

A :class:`CircuitBreakerRegistry` owns the breakers. Each client makes its own
unless one is passed in, so sharing state between clients (for example all
workers of one process calling the same model) is an explicit choice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import CLOSED, HALF_OPENED, OPENED, OpenedState

from dspex.errors import (
    CircuitOpenError,
    ConfigurationError,
    LMConnectionError,
    LMServerError,
    LMTimeoutError,
)

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerPolicy",
    "CircuitBreakerRegistry",
    "counts_as_failure",
]

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]

_STATE_NAMES: dict[str, BreakerState] = {
    CLOSED: "closed",
    OPENED: "open",
    HALF_OPENED: "half_open",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class CircuitBreakerPolicy:
    """When a provider+model is declared down, and how it is probed back.

    Args:
        failure_threshold: Consecutive failures (5xx, timeouts, connection
            errors) that open the circuit.
        recovery_timeout_s: Seconds the circuit stays open before probing.
        half_open_max_probes: Calls allowed through at once while half-open.

    Example:
        >>> CircuitBreakerPolicy(failure_threshold=3, recovery_timeout_s=10).half_open_max_probes
        1
    """

    failure_threshold: int = 5
    recovery_timeout_s: float = 30.0
    half_open_max_probes: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigurationError(
                f"failure_threshold must be >= 1, got {self.failure_threshold}"
            )
        if not self.recovery_timeout_s > 0:
            raise ConfigurationError(
                f"recovery_timeout_s must be > 0, got {self.recovery_timeout_s}"
            )
        if self.half_open_max_probes < 1:
            raise ConfigurationError(
                f"half_open_max_probes must be >= 1, got {self.half_open_max_probes}"
            )


def counts_as_failure(error: BaseException) -> bool:
    """Whether an error says the provider is unhealthy (and so trips the breaker)."""
    return isinstance(error, LMServerError | LMTimeoutError | LMConnectionError)


class CircuitBreaker:
    """One circuit (one provider+model). Get it from a :class:`CircuitBreakerRegistry`."""

    def __init__(
        self,
        *,
        name: str,
        provider: str,
        model: str,
        policy: CircuitBreakerPolicy,
        factory: AsyncCircuitBreakerFactory,
    ) -> None:
        self.name = name
        self.provider = provider
        self.model = model
        self.policy = policy
        self._factory = factory
        self._breaker: Any = None  # purgatory's AsyncCircuitBreaker, made on first use
        self._init_lock = asyncio.Lock()
        self._probes_in_flight = 0

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half_open`` (for metrics and health checks)."""
        if self._breaker is None:
            return "closed"
        return _STATE_NAMES.get(self._breaker.context.state, "closed")

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted while closed."""
        if self._breaker is None:
            return 0
        return int(self._breaker.context.failure_count or 0)

    @property
    def probes_in_flight(self) -> int:
        """Half-open probe calls running now."""
        return self._probes_in_flight

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` if the circuit admits it, and record its outcome.

        Raises:
            CircuitOpenError: The circuit is open, or half-open with every probe slot taken.
        """
        breaker = await self._purgatory_breaker()
        context = breaker.context
        admitted_state = context.state
        if admitted_state == OPENED:
            remaining = context.opened_at + context.ttl - time.time()
            if remaining > 0:
                raise self._open_error("open", retry_after=remaining)
        probe = admitted_state != CLOSED
        if probe and self._probes_in_flight >= self.policy.half_open_max_probes:
            raise self._open_error("half-open and probing", retry_after=None)
        if probe:
            self._probes_in_flight += 1
        try:
            try:
                await breaker.__aenter__()
            except OpenedState:
                # Lost a race with a call that opened the circuit since the check above.
                raise self._open_error("open", retry_after=None) from None
            try:
                result = await attempt()
            except asyncio.CancelledError:
                raise  # says nothing about the provider's health
            except BaseException as exc:
                if self._outcome_still_relevant(probe, context.state):
                    if counts_as_failure(exc):
                        await breaker.__aexit__(type(exc), exc, exc.__traceback__)
                    else:
                        await breaker.__aexit__(None, None, None)
                raise
            if self._outcome_still_relevant(probe, context.state):
                await breaker.__aexit__(None, None, None)
            return result
        finally:
            if probe:
                self._probes_in_flight -= 1

    @staticmethod
    def _outcome_still_relevant(probe: bool, state_now: str) -> bool:
        # A call admitted while closed that ends after the circuit opened says
        # nothing about the provider *now*; letting it re-open a half-open
        # circuit (or close it) would undo the probe's verdict.
        return probe or state_now == CLOSED

    async def _purgatory_breaker(self) -> Any:
        if self._breaker is None:
            async with self._init_lock:
                if self._breaker is None:
                    self._breaker = await self._factory.get_breaker(
                        self.name,
                        threshold=self.policy.failure_threshold,
                        ttl=self.policy.recovery_timeout_s,
                    )
        return self._breaker

    def _open_error(self, why: str, *, retry_after: float | None) -> CircuitOpenError:
        return CircuitOpenError(
            f"circuit breaker {self.name} is {why}; call not sent",
            provider=self.provider,
            model=self.model,
            retry_after=retry_after,
        )


class CircuitBreakerRegistry:
    """The circuit breakers of one or more clients, one per provider+model.

    Args:
        policy: Thresholds used for every breaker this registry creates.

    Example:
        >>> registry = CircuitBreakerRegistry(CircuitBreakerPolicy(failure_threshold=3))
        >>> registry.get("openai", "gpt-4o-mini").state
        'closed'
    """

    def __init__(self, policy: CircuitBreakerPolicy | None = None) -> None:
        self.policy = policy if policy is not None else CircuitBreakerPolicy()
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=self.policy.failure_threshold,
            default_ttl=self.policy.recovery_timeout_s,
        )
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, provider: str, model: str) -> CircuitBreaker:
        """The breaker for ``provider`` and ``model`` (created on first request)."""
        name = f"{provider}:{model}"
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(
                name=name, provider=provider, model=model, policy=self.policy, factory=self._factory
            )
            self._breakers[name] = breaker
        return breaker

    def states(self) -> dict[str, BreakerState]:
        """Every breaker's state by ``provider:model`` (for a metrics gauge)."""
        return {name: breaker.state for name, breaker in self._breakers.items()}

    def add_listener(self, hook: Callable[[str, str, Any], None]) -> None:
        """Call ``hook(circuit_name, event_name, event)`` on purgatory's state events."""
        self._factory.add_listener(hook)
