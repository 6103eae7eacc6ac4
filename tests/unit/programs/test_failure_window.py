"""The breaker's window: a failure rate over time, not a run of consecutive failures."""

from __future__ import annotations

from dspex.programs.lm._breaker import CircuitBreakerPolicy, FailureWindow


def test_scattered_failures_among_many_calls_never_say_down() -> None:
    window = FailureWindow(CircuitBreakerPolicy(failure_threshold=5, failure_rate=0.5))
    # One call in four fails, in runs of up to three: never half the window.
    pattern = [True, True, True, False, False, False, False, False, False, False, False, False]
    verdicts = [window.record(failed, now=i * 0.01) for i, failed in enumerate(pattern * 20)]
    assert not any(verdicts)
    assert window.failures == 60


def test_an_outage_says_down_once_threshold_and_rate_are_both_met() -> None:
    window = FailureWindow(CircuitBreakerPolicy(failure_threshold=5, failure_rate=0.5))
    for i in range(10):
        assert not window.record(False, now=i * 0.01)
    verdicts = [window.record(True, now=1 + i * 0.01) for i in range(10)]
    # Five failures reach the threshold; the tenth makes them half of twenty calls.
    assert verdicts.index(True) == 9


def test_old_outcomes_leave_the_window() -> None:
    window = FailureWindow(CircuitBreakerPolicy(failure_threshold=2, window_s=10.0))
    assert not window.record(True, now=0.0)
    # Eleven seconds later the first failure has left: one failure is not enough.
    assert not window.record(True, now=11.0)
    assert window.failures == 1
    assert window.record(True, now=12.0)


def test_fast_failures_of_a_burst_are_weighed_against_the_calls_still_running() -> None:
    # 64 calls go out at once; one in five fails, and the failures come back
    # first (a 500 is answered at once, a success takes the model's time).
    window = FailureWindow(CircuitBreakerPolicy(failure_threshold=5, failure_rate=0.5))
    for _ in range(64):
        window.start()
    outcomes = [True] * 13 + [False] * 51
    verdicts = [
        window.record(failed, now=i * 0.001, started=True) for i, failed in enumerate(outcomes)
    ]
    assert not any(verdicts)
    assert window.running == 0
    # Counted only by their outcomes, the same burst would have said "down" at once.
    uncounted = FailureWindow(CircuitBreakerPolicy(failure_threshold=5, failure_rate=0.5))
    assert any(uncounted.record(failed, now=i * 0.001) for i, failed in enumerate(outcomes))


def test_calls_that_end_without_a_verdict_stop_counting() -> None:
    window = FailureWindow(CircuitBreakerPolicy(failure_threshold=2, failure_rate=0.5))
    for _ in range(4):
        window.start()
    window.forget()
    window.forget()
    assert window.running == 2
    assert not window.record(True, now=0.0, started=True)
    # Two failures of the two calls left: all of the window.
    assert window.record(True, now=0.1, started=True)
