"""One LMCallEvent per acomplete: outcome, retries, cache hits, scoped to its context."""

from __future__ import annotations

import asyncio

import pytest

from bench.scripted_lm import Reply, ScriptedLM
from dspex.errors import LMServerError
from dspex.programs.lm import LMCallEvent, Message, OpenAIChat, RetryPolicy, observe_lm_calls

ASK = [Message(role="user", content="Hello?")]


def client(server: ScriptedLM, attempts: int = 3) -> OpenAIChat:
    return OpenAIChat(
        model="observed",
        base_url=server.openai_url,
        retry=RetryPolicy(max_attempts=attempts, base_delay_s=0.01, max_delay_s=0.02),
    )


async def test_ok_retried_and_cached_calls_are_each_one_event() -> None:
    events: list[LMCallEvent] = []
    async with ScriptedLM() as server, client(server) as lm:
        server.script(Reply.error(500), Reply())
        with observe_lm_calls(events.append):
            await lm.acomplete(ASK)  # 500, then ok: one call, one retry
            await lm.acomplete(ASK)  # the same request again: a cache hit
    assert [(e.status, e.retries, e.cached) for e in events] == [
        ("ok", 1, False),
        ("ok", 0, True),
    ]
    first, hit = events
    assert (first.provider, first.model) == ("openai", "observed")
    assert first.usage.calls == 1
    assert first.usage.prompt_tokens == 11
    assert first.latency_s > 0
    assert hit.usage.cached_calls == 1
    assert hit.usage.prompt_tokens == 0


async def test_a_failed_call_reports_its_error_type_and_retries() -> None:
    events: list[LMCallEvent] = []
    async with ScriptedLM() as server, client(server, attempts=2) as lm:
        server.script(Reply.error(503), Reply.error(503))
        with observe_lm_calls(events.append), pytest.raises(LMServerError):
            await lm.acomplete(ASK)
    assert [(e.status, e.error_type, e.retries) for e in events] == [("error", "lm_error", 1)]


async def test_observers_see_only_calls_made_in_their_scope() -> None:
    outer: list[LMCallEvent] = []
    inner: list[LMCallEvent] = []
    async with ScriptedLM() as server, client(server) as lm:
        await lm.acomplete([Message(role="user", content="unobserved")])

        async def observed(text: str, into: list[LMCallEvent]) -> None:
            with observe_lm_calls(into.append):
                await lm.acomplete([Message(role="user", content=text)])

        with observe_lm_calls(outer.append):
            await asyncio.gather(observed("a", inner), lm.acomplete(ASK))
    assert len(inner) == 1
    assert len(outer) == 2  # its own call, and the nested one (both observers see it)


async def test_a_failing_observer_does_not_fail_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    called: list[LMCallEvent] = []

    def broken(event: LMCallEvent) -> None:
        called.append(event)
        raise RuntimeError("observer bug")

    after: list[LMCallEvent] = []
    async with ScriptedLM() as server, client(server) as lm:
        server.script(Reply.completion("still answered"))
        with observe_lm_calls(broken), observe_lm_calls(after.append):
            response = await lm.acomplete(ASK)
    assert response.text == "still answered"
    assert len(called) == 1  # the observer did run, and raised
    assert len(after) == 1  # the other observer still got the event
    assert "observer bug" in caplog.text
