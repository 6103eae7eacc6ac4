"""Circuit breakers per provider and model, on top of purgatory.

purgatory keeps the state machine (closed → open → half-open after the
recovery timeout → closed on success, open again on failure). What is added
here:

* **A failure rate over a window opens it**, not a run of consecutive
  failures. Among many concurrent calls, a few failures in a row are noise
  (20 % of calls failing gives runs of three every few dozen calls); a
  provider is down when, over the last ``window_s`` seconds, at least
  ``failure_threshold`` calls failed *and* they are at least
  ``failure_rate`` of the calls, counting those still running (a burst's
  fast 500s must not look like the whole burst). The window decides; purgatory, fed one
  failure when the window trips (its threshold is 1), keeps the states.
* **Waiting instead of failing**, when ``when_open="wait"``: a call that
  finds the circuit open waits until it may probe (or until a probe's verdict)
  instead of raising :class:`~dspex.errors.CircuitOpenError`, bounded by the
  caller's own deadline. A worker uses it: its requests are durable in Kafka,
  so an outage should stop consumption, not turn the backlog into errors.

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
import contextlib
import time
from collections import deque
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
    "FailureWindow",
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
    """When a provider+model is declared down, how it is probed back, and who waits.

    Args:
        failure_threshold: Failures (5xx, timeouts, connection errors) within
            ``window_s`` needed before the circuit may open.
        failure_rate: Share of the window's calls that must have failed, too.
        window_s: Seconds of outcomes the rate is computed over.
        recovery_timeout_s: Seconds the circuit stays open before probing.
        half_open_max_probes: Calls allowed through at once while half-open.
        when_open: ``"fail"``: a call finding the circuit open raises
            CircuitOpenError at once. ``"wait"``: it waits for the circuit to
            admit it (bound the wait with the caller's timeout).

    Example:
        >>> CircuitBreakerPolicy(failure_threshold=3, recovery_timeout_s=10).half_open_max_probes
        1
    """

    failure_threshold: int = 5
    failure_rate: float = 0.5
    window_s: float = 30.0
    recovery_timeout_s: float = 30.0
    half_open_max_probes: int = 1
    when_open: Literal["fail", "wait"] = "fail"

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigurationError(
                f"failure_threshold must be >= 1, got {self.failure_threshold}"
            )
        if not 0 < self.failure_rate <= 1:
            raise ConfigurationError(f"failure_rate must be in (0, 1], got {self.failure_rate}")
        for name in ("window_s", "recovery_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.half_open_max_probes < 1:
            raise ConfigurationError(
                f"half_open_max_probes must be >= 1, got {self.half_open_max_probes}"
            )
        if self.when_open not in ("fail", "wait"):
            raise ConfigurationError(f"when_open must be 'fail' or 'wait', got {self.when_open!r}")


class FailureWindow:
    """Outcomes of the last ``window_s`` seconds, and whether they say "down".

    Example:
        >>> window = FailureWindow(CircuitBreakerPolicy(failure_threshold=2))
        >>> [window.record(failed) for failed in (True, False, True)]
        [False, False, True]
    """

    def __init__(self, policy: CircuitBreakerPolicy) -> None:
        self.policy = policy
        self._outcomes: deque[tuple[float, bool]] = deque()
        self.failures = 0
        #: Calls started (while closed) whose outcome is not known yet.
        self.running = 0

    @property
    def calls(self) -> int:
        return len(self._outcomes)

    def start(self) -> None:
        """A call went out: it counts among the window's calls until its outcome arrives.

        Without it, a burst of concurrent calls whose failures come back first
        (a 500 is answered at once, a success takes the model's time) would
        look like a run of nothing but failures.
        """
        self.running += 1

    def record(self, failed: bool, now: float | None = None, *, started: bool = False) -> bool:
        """Add one outcome; True when the window now says the provider is down.

        ``started``: the call was counted by :meth:`start` (it stops running now).
        """
        if started:
            self.running -= 1
        now = time.monotonic() if now is None else now
        self._outcomes.append((now, failed))
        self.failures += failed
        horizon = now - self.policy.window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            self.failures -= self._outcomes.popleft()[1]
        return (
            failed
            and self.failures >= self.policy.failure_threshold
            and self.failures >= self.policy.failure_rate * (len(self._outcomes) + self.running)
        )

    def forget(self) -> None:
        """A started call ended with no outcome that counts (cancelled, or after opening)."""
        self.running -= 1

    def clear(self) -> None:
        self._outcomes.clear()
        self.failures = 0


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
        self._window = FailureWindow(policy)
        # Set (and replaced) whenever the circuit may admit calls it did not
        # before: a probe's verdict, or the circuit closing.
        self._changed: asyncio.Event | None = None
        self._changed_loop: asyncio.AbstractEventLoop | None = None

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half_open`` (for metrics and health checks)."""
        if self._breaker is None:
            return "closed"
        return _STATE_NAMES.get(self._breaker.context.state, "closed")

    @property
    def failure_count(self) -> int:
        """Failures in the current window (while closed)."""
        return self._window.failures

    @property
    def probes_in_flight(self) -> int:
        """Half-open probe calls running now."""
        return self._probes_in_flight

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` if the circuit admits it, and record its outcome.

        With ``when_open="wait"`` a call the circuit does not admit waits
        until it does; cancel it (a timeout) to give up.

        Raises:
            CircuitOpenError: ``when_open="fail"`` and the circuit is open, or
                half-open with every probe slot taken.
        """
        breaker = await self._purgatory_breaker()
        context = breaker.context
        while True:
            try:
                probe = self._admit(context)
                break
            except CircuitOpenError as refused:
                if self.policy.when_open == "fail":
                    raise
                await self._wait_for_change(refused.retry_after)
        if probe:
            self._probes_in_flight += 1
        try:
            try:
                await breaker.__aenter__()
            except OpenedState:
                # Lost a race with a call that opened the circuit since the check above.
                raise self._open_error("open", retry_after=None) from None
            if not probe:
                self._window.start()
            try:
                result = await attempt()
            except asyncio.CancelledError:
                if not probe:
                    self._window.forget()
                raise  # says nothing about the provider's health
            except BaseException as exc:
                await self._report(breaker, probe, exc if counts_as_failure(exc) else None)
                raise
            await self._report(breaker, probe, None)
            return result
        finally:
            if probe:
                self._probes_in_flight -= 1

    def _admit(self, context: Any) -> bool:
        """Whether the call goes in as a probe; CircuitOpenError when it may not go in."""
        state = context.state
        if state == OPENED:
            remaining = context.opened_at + context.ttl - time.time()
            if remaining > 0:
                raise self._open_error("open", retry_after=remaining)
        probe = bool(state != CLOSED)
        if probe and self._probes_in_flight >= self.policy.half_open_max_probes:
            raise self._open_error("half-open and probing", retry_after=None)
        return probe

    async def _report(self, breaker: Any, probe: bool, failure: BaseException | None) -> None:
        """Feed one outcome to the window, and to purgatory what it must act on."""
        if probe:
            # A probe's verdict goes straight to the state machine.
            if failure is None:
                await breaker.__aexit__(None, None, None)
                self._window.clear()
            else:
                await breaker.__aexit__(type(failure), failure, failure.__traceback__)
            self._notify()
            return
        if breaker.context.state != CLOSED:
            # Admitted while closed, ended after the circuit opened: it says
            # nothing about the provider *now*.
            self._window.forget()
            return
        if self._window.record(failure is not None, started=True) and failure is not None:
            await breaker.__aexit__(type(failure), failure, failure.__traceback__)
        else:
            await breaker.__aexit__(None, None, None)

    async def _wait_for_change(self, timeout_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        if self._changed is None or self._changed_loop is not loop:
            self._changed, self._changed_loop = asyncio.Event(), loop
        # A timeout means the recovery time passed: the circuit may admit a probe now.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _purgatory_breaker(self) -> Any:
        if self._breaker is None:
            async with self._init_lock:
                if self._breaker is None:
                    # Threshold 1: the window decides when to open; purgatory
                    # is told only then (one failure) and keeps the states.
                    self._breaker = await self._factory.get_breaker(
                        self.name, threshold=1, ttl=self.policy.recovery_timeout_s
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
            default_threshold=1, default_ttl=self.policy.recovery_timeout_s
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
