"""Retries, backoff and error mapping of OpenAIChat against the scripted server."""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any, cast

import pytest

from bench.scripted_lm import DEFAULT_TEXT, Reply, ScriptedLM
from dspex.errors import (
    LMAuthError,
    LMBadRequestError,
    LMConnectionError,
    LMRateLimitError,
    LMResponseError,
    LMServerError,
    LMTimeoutError,
)
from dspex.programs.lm import Message, OpenAIChat, RetryPolicy
from dspex.programs.lm._retry import parse_retry_after

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, seed=7)


def ask(text: str = "Hello?") -> list[Message]:
    return [Message(role="user", content=text)]


def client(server: ScriptedLM, **options: Any) -> OpenAIChat:
    settings: dict[str, Any] = {"retry": FAST_RETRY, "cache": None, **options}
    return OpenAIChat(model="scripted-model", base_url=server.openai_url, **settings)


async def test_happy_path_returns_text_usage_and_sends_the_openai_format() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        response = await lm.acomplete(
            [Message(role="system", content="Be brief."), *ask("Hi")], max_tokens=20, stop=["\n"]
        )
    assert response.text == DEFAULT_TEXT
    assert response.choices == (DEFAULT_TEXT,)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (11, 7)
    assert response.usage.calls == 1
    assert lm.usage.total_tokens == 18
    sent = server.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.json["model"] == "scripted-model"
    assert sent.json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent.json["temperature"] == 0.0
    assert sent.json["max_tokens"] == 20
    assert sent.json["stop"] == ["\n"]
    assert "response_format" not in sent.json


async def test_429_with_retry_after_is_honoured() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        server.script(Reply.error(429, "slow down", headers={"Retry-After": "1"}))
        response = await lm.acomplete(ask())
    assert response.text == DEFAULT_TEXT
    first, second = server.requests
    # The client's own backoff would be <= 50 ms; only Retry-After explains a 1 s gap.
    assert second.arrived_at - first.arrived_at >= 0.95
    assert lm.stats.retries == 1


async def test_429_retries_run_out_into_a_rate_limit_error() -> None:
    async with (
        ScriptedLM(default=Reply.error(429, headers={"Retry-After": "0.05"})) as server,
        client(server) as lm,
    ):
        with pytest.raises(LMRateLimitError) as caught:
            await lm.acomplete(ask())
    assert caught.value.status == 429
    assert caught.value.retry_after == pytest.approx(0.05)
    assert len(server.requests) == FAST_RETRY.max_attempts
    assert lm.stats.errors["LMRateLimitError"] == 1


async def test_500_then_success() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        server.script(Reply.error(500, "boom"))
        response = await lm.acomplete(ask())
    assert response.text == DEFAULT_TEXT
    assert [r.path for r in server.requests] == ["/v1/chat/completions"] * 2
    assert lm.usage.calls == 1


async def test_backoff_grows_between_attempts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dspex.programs.lm")
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=1.0, seed=3)
    async with ScriptedLM(default=Reply.error(503)) as server, client(server, retry=retry) as lm:
        with pytest.raises(LMServerError) as caught:
            await lm.acomplete(ask())
    assert caught.value.status == 503
    times = [request.arrived_at for request in server.requests]
    assert len(times) == 3
    # The waits the client chose, as it logs them ("retry N in D s").
    delays = [
        float(cast(tuple[Any, ...], record.args)[5])
        for record in caplog.records
        if "retry" in str(record.msg)
    ]
    assert len(delays) == 2
    # Full jitter: each wait is drawn from [0, base * 2**k]...
    assert 0 <= delays[0] <= 0.1
    assert 0 <= delays[1] <= 0.2
    # ... and is waited out in full before the next attempt (a sleep never ends early;
    # how much later it ends depends on the machine's load, so that is not asserted).
    assert times[1] - times[0] >= delays[0] - 0.005
    assert times[2] - times[1] >= delays[1] - 0.005


async def test_timeout_raises_after_retries() -> None:
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.01)
    async with (
        ScriptedLM(default=Reply(delay_s=0.5)) as server,
        client(server, timeout_s=0.1, retry=retry) as lm,
    ):
        with pytest.raises(LMTimeoutError) as caught:
            await lm.acomplete(ask())
    assert len(server.requests) == 2
    assert caught.value.provider == "openai"
    assert caught.value.model == "scripted-model"


async def test_malformed_json_body_is_a_response_error() -> None:
    async with ScriptedLM(default=Reply.malformed()) as server, client(server) as lm:
        with pytest.raises(LMResponseError, match="not JSON"):
            await lm.acomplete(ask())
    assert len(server.requests) == FAST_RETRY.max_attempts


@pytest.mark.parametrize(
    "reply",
    [
        Reply.completion(""),
        Reply.completion("   \n"),
        Reply(body={"id": "x", "object": "chat.completion"}),
        Reply(body={"choices": []}),
        Reply(body=[1, 2]),  # type: ignore[arg-type]
    ],
    ids=["empty", "blank", "no-choices", "choices-empty", "not-an-object"],
)
async def test_empty_or_shapeless_completion_is_a_response_error(reply: Reply) -> None:
    async with ScriptedLM(default=reply) as server, client(server) as lm:
        with pytest.raises(LMResponseError):
            await lm.acomplete(ask())


async def test_401_is_an_auth_error_without_retry() -> None:
    async with ScriptedLM(default=Reply.error(401, "bad key")) as server, client(server) as lm:
        with pytest.raises(LMAuthError) as caught:
            await lm.acomplete(ask())
    assert len(server.requests) == 1
    assert caught.value.status == 401
    assert not caught.value.retryable


@pytest.mark.parametrize("status", [400, 403, 404, 422])
async def test_client_errors_are_never_retried(status: int) -> None:
    async with ScriptedLM(default=Reply.error(status, "nope")) as server, client(server) as lm:
        with pytest.raises((LMBadRequestError, LMAuthError)) as caught:
            await lm.acomplete(ask())
    assert len(server.requests) == 1
    assert caught.value.status == status
    assert "nope" in str(caught.value)


async def test_dropped_connection_is_a_connection_error() -> None:
    async with ScriptedLM(default=Reply(drop=True)) as server, client(server) as lm:
        with pytest.raises(LMConnectionError):
            await lm.acomplete(ask())
    assert len(server.requests) == FAST_RETRY.max_attempts


async def test_unreachable_endpoint_is_a_connection_error() -> None:
    async with ScriptedLM() as server:
        url = server.openai_url  # nobody listens there once the server has stopped
    lm = OpenAIChat(model="m", base_url=url, retry=RetryPolicy(max_attempts=1), cache=None)
    async with lm:
        with pytest.raises(LMConnectionError) as caught:
            await lm.acomplete(ask())
    assert caught.value.__cause__ is not None


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


async def test_retry_after_http_date_is_honoured() -> None:
    # HTTP-dates have one-second resolution: the wait is 1-2 s for "now + 2 s".
    date = email.utils.formatdate(time.time() + 2, usegmt=True)
    async with ScriptedLM() as server, client(server) as lm:
        server.script(Reply.error(503, headers={"Retry-After": date}))
        await lm.acomplete(ask())
    first, second = server.requests
    assert second.arrived_at - first.arrived_at >= 0.9
