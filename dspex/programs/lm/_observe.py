"""Observing LM calls: one event per ``acomplete``, to whoever is listening.

A worker wants one telemetry record and a few metric updates per LM call,
attributed to the request being answered. The listener is scoped with a
context variable, like the rest of dspex's configuration, so concurrent
requests each see only their own calls and a program needs no extra wiring.

Example:
    >>> events: list[LMCallEvent] = []
    >>> with observe_lm_calls(events.append):       # doctest: +SKIP
    ...     await program.acall(question="...")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from dspex.programs.lm.types import TokenUsage

__all__ = ["LMCallEvent", "LMCallObserver", "notify_lm_call", "observe_lm_calls"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMCallEvent:
    """One finished ``LM.acomplete`` call.

    Attributes:
        provider: The client's provider kind, e.g. ``"openai"``.
        model: The model name.
        status: ``"ok"``, or ``"error"`` when it raised after retries.
        error_type: The stable error code (``dspex.errors.error_type``) on error.
        latency_s: Seconds from the call to its answer or final error.
        usage: Tokens and cost (a cache hit counts in ``cached_calls`` only).
        cached: Answered from the response cache.
        retries: Attempts retried after a failure within this call.
    """

    provider: str
    model: str
    status: Literal["ok", "error"]
    latency_s: float
    usage: TokenUsage = field(default_factory=TokenUsage)
    cached: bool = False
    retries: int = 0
    error_type: str | None = None


LMCallObserver = Callable[[LMCallEvent], None]

_OBSERVERS: ContextVar[tuple[LMCallObserver, ...]] = ContextVar(
    "dspex_lm_call_observers", default=()
)


@contextmanager
def observe_lm_calls(observer: LMCallObserver) -> Iterator[None]:
    """Call ``observer`` with every LM call made inside the block (and tasks it starts)."""
    token = _OBSERVERS.set((*_OBSERVERS.get(), observer))
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


def notify_lm_call(event: LMCallEvent) -> None:
    """Hand ``event`` to the observers in scope; an observer's failure is only logged."""
    for observer in _OBSERVERS.get():
        try:
            observer(event)
        except Exception:  # telemetry must never fail the call it describes
            log.exception("LM call observer %r failed", observer)
