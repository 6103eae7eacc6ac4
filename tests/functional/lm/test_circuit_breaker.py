"""The circuit breaker opens on a failure rate, fails fast or waits, and probes back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.scripted_lm import Reply, ScriptedLM
from dspex.errors import CircuitOpenError, LMBadRequestError, LMServerError, LMTimeoutError
from dspex.programs.lm import (
    CircuitBreakerPolicy,
    CircuitBreakerRegistry,
    Message,
    OpenAIChat,
    RetryPolicy,
)

RECOVERY_S = 0.3
POLICY = CircuitBreakerPolicy(failure_threshold=3, recovery_timeout_s=RECOVERY_S)


def ask(text: str = "Hello?") -> list[Message]:
    return [Message(role="user", content=text)]


def client(server: ScriptedLM, **options: Any) -> OpenAIChat:
    settings: dict[str, Any] = {
        "retry": RetryPolicy(max_attempts=1),
        "cache": None,
        "circuit_breaker": POLICY,
        **options,
    }
    return OpenAIChat(model="scripted-model", base_url=server.openai_url, **settings)


async def trip(lm: OpenAIChat, server: ScriptedLM, failures: int) -> None:
    server.script(*[Reply.error(500, "down")] * failures)
    for _ in range(failures):
        with pytest.raises(LMServerError):
            await lm.acomplete(ask())


async def test_consecutive_failures_open_the_circuit_and_calls_fail_fast() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        await trip(lm, server, 3)
        assert lm.breaker_state == "open"
        with pytest.raises(CircuitOpenError) as caught:
            await lm.acomplete(ask())
    assert len(server.requests) == 3  # the fourth call never reached the server
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= RECOVERY_S
    assert caught.value.provider == "openai"


async def test_failures_below_the_rate_do_not_open_it_and_above_it_do() -> None:
    # Threshold 3, rate 0.5: four failures among nine calls (44 %) leave it closed.
    async with ScriptedLM() as server, client(server) as lm:
        await trip(lm, server, 2)
        for _ in range(5):
            await lm.acomplete(ask())
        await trip(lm, server, 2)
        assert lm.breaker_state == "closed"
        # The fifth failure makes it five of ten: half the window has failed.
        await trip(lm, server, 1)
        assert lm.breaker_state == "open"


async def test_a_waiting_breaker_holds_calls_until_a_probe_succeeds() -> None:
    policy = CircuitBreakerPolicy(
        failure_threshold=3, recovery_timeout_s=RECOVERY_S, when_open="wait"
    )
    async with ScriptedLM() as server, client(server, circuit_breaker=policy) as lm:
        await trip(lm, server, 3)
        assert lm.breaker_state == "open"
        before = len(server.requests)
        # None of these raises: they wait out the recovery time, one probes,
        # and the rest follow once the probe has closed the circuit.
        answers = await asyncio.gather(*(lm.acomplete(ask(f"q{i}")) for i in range(5)))
        assert len(answers) == 5
        assert lm.breaker_state == "closed"
    assert len(server.requests) - before == 5


async def test_a_waiting_call_gives_up_only_when_its_caller_does() -> None:
    policy = CircuitBreakerPolicy(failure_threshold=3, recovery_timeout_s=3600, when_open="wait")
    async with ScriptedLM() as server, client(server, circuit_breaker=policy) as lm:
        await trip(lm, server, 3)
        waiting = asyncio.ensure_future(lm.acomplete(ask()))
        # It is parked on the breaker, not failed: cancel it as a deadline would.
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        assert not done
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert len(server.requests) == 3


async def test_client_errors_do_not_trip_the_breaker() -> None:
    async with ScriptedLM(default=Reply.error(400, "bad")) as server, client(server) as lm:
        for _ in range(5):
            with pytest.raises(LMBadRequestError):
                await lm.acomplete(ask())
        assert lm.breaker_state == "closed"
    assert len(server.requests) == 5


async def test_timeouts_trip_the_breaker() -> None:
    async with (
        ScriptedLM(default=Reply(delay_s=0.3)) as server,
        client(server, timeout_s=0.05) as lm,
    ):
        for _ in range(3):
            with pytest.raises(LMTimeoutError):
                await lm.acomplete(ask())
        assert lm.breaker_state == "open"


async def test_half_open_admits_only_the_configured_probes_then_closes_on_success() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        await trip(lm, server, 3)
        await asyncio.sleep(RECOVERY_S + 0.05)
        before = len(server.requests)
        # The probe is slow, so the other calls arrive while it is in flight.
        server.script(Reply(delay_s=0.3))
        results = await asyncio.gather(
            *(lm.acomplete(ask(f"q{i}")) for i in range(5)), return_exceptions=True
        )
        successes = [r for r in results if not isinstance(r, BaseException)]
        rejected = [r for r in results if isinstance(r, CircuitOpenError)]
        assert len(successes) == POLICY.half_open_max_probes == 1
        assert len(rejected) == 4
        assert len(server.requests) - before == 1
        assert lm.breaker_state == "closed"
        await lm.acomplete(ask("after"))  # closed again: calls flow


async def test_more_probes_when_configured() -> None:
    policy = CircuitBreakerPolicy(
        failure_threshold=1, recovery_timeout_s=RECOVERY_S, half_open_max_probes=2
    )
    async with ScriptedLM() as server, client(server, circuit_breaker=policy) as lm:
        await trip(lm, server, 1)
        await asyncio.sleep(RECOVERY_S + 0.05)
        server.script(Reply(delay_s=0.3), Reply(delay_s=0.3))
        results = await asyncio.gather(
            *(lm.acomplete(ask(f"q{i}")) for i in range(6)), return_exceptions=True
        )
    assert sum(not isinstance(r, BaseException) for r in results) == 2
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 4
    assert len(server.requests) == 1 + 2


async def test_a_failed_probe_reopens_the_circuit() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        await trip(lm, server, 3)
        await asyncio.sleep(RECOVERY_S + 0.05)
        server.script(Reply.error(503, "still down"))
        with pytest.raises(LMServerError):
            await lm.acomplete(ask())
        assert lm.breaker_state == "open"
        with pytest.raises(CircuitOpenError):
            await lm.acomplete(ask())
    assert len(server.requests) == 4


async def test_breaker_stops_retries_mid_call() -> None:
    retry = RetryPolicy(max_attempts=10, base_delay_s=0.01, max_delay_s=0.01)
    async with (
        ScriptedLM(default=Reply.error(500)) as server,
        client(server, retry=retry) as lm,
    ):
        with pytest.raises(CircuitOpenError):
            await lm.acomplete(ask())
    assert len(server.requests) == POLICY.failure_threshold


async def test_a_shared_registry_shares_state_between_clients() -> None:
    registry = CircuitBreakerRegistry(POLICY)
    async with ScriptedLM() as server:
        async with client(server, circuit_breaker=registry) as first:
            await trip(first, server, 3)
        async with client(server, circuit_breaker=registry) as second:
            with pytest.raises(CircuitOpenError):
                await second.acomplete(ask())
    assert registry.states() == {"openai:scripted-model": "open"}


async def test_breaker_can_be_disabled() -> None:
    async with (
        ScriptedLM(default=Reply.error(500)) as server,
        client(server, circuit_breaker=None) as lm,
    ):
        for _ in range(5):
            with pytest.raises(LMServerError):
                await lm.acomplete(ask())
        assert lm.breaker_state is None
    assert len(server.requests) == 5
