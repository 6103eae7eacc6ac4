"""API keys reach request headers and nothing else."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import pytest

from bench.scripted_lm import Reply, ScriptedLM
from dspex.errors import ConfigurationError, LMAuthError, LMServerError
from dspex.programs.lm import (
    AnthropicChat,
    Message,
    OpenAIChat,
    ResponseCache,
    RetryPolicy,
)

KEY = "sk-test-SECRET123"


def ask(text: str = "Hi") -> list[Message]:
    return [Message(role="user", content=text)]


def assert_clean(text: str) -> None:
    assert KEY not in text
    assert "SECRET123" not in text


async def test_the_key_never_leaks_into_errors_logs_state_or_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log at DEBUG too
    cache_dir = tmp_path / "cache"
    echo = f"Incorrect API key provided: {KEY}. Find your key at ..."
    async with ScriptedLM() as server:
        lm = OpenAIChat(
            model="scripted-model",
            base_url=server.openai_url,
            api_key=KEY,
            cache=ResponseCache(directory=cache_dir),
            retry=RetryPolicy(max_attempts=2, base_delay_s=0.01),
        )
        async with lm:
            # A server that echoes the key, on an error that is retried (and logged).
            server.script(Reply.error(500, echo), Reply.error(500, echo))
            with pytest.raises(LMServerError) as server_error:
                await lm.acomplete(ask("one"))
            server.script(Reply.error(401, echo))
            with pytest.raises(LMAuthError) as auth_error:
                await lm.acomplete(ask("two"))
            await lm.acomplete(ask("three"))  # cached on disk
        assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)

    for caught in (server_error, auth_error):
        assert_clean(str(caught.value))
        assert_clean(repr(caught.value))
        assert_clean("".join(traceback.format_exception(caught.value)))
    assert_clean(caplog.text)
    for record in caplog.records:
        assert_clean(record.getMessage())
    assert_clean(repr(lm))
    assert_clean(str(lm))
    assert_clean(json.dumps(lm.dump_state()))
    assert_clean(repr(lm.__dict__))
    files = list(cache_dir.iterdir())
    assert files
    for path in files:
        assert b"SECRET123" not in path.read_bytes()


async def test_no_key_means_no_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with ScriptedLM() as server, OpenAIChat(model="m", base_url=server.openai_url) as lm:
        await lm.acomplete(ask())
    assert "authorization" not in server.requests[0].headers


async def test_key_from_environment_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "openai.key"
    key_file.write_text("sk-from-file\n")
    monkeypatch.setenv("MY_KEY_VAR", "sk-from-env")
    async with ScriptedLM() as server:
        lm_env = OpenAIChat(
            model="m", base_url=server.openai_url, api_key_env="MY_KEY_VAR", api_key_file=key_file
        )
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        lm_file = OpenAIChat(model="m", base_url=server.openai_url, api_key_file=key_file)
        async with lm_env, lm_file:
            await lm_env.acomplete(ask("a"))
            await lm_file.acomplete(ask("b"))
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer sk-from-env",
        "Bearer sk-from-file",
    ]


def test_an_unreadable_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"missing\.key"):
        OpenAIChat(
            model="m", api_key_env="DSPEX_TEST_UNSET_VAR", api_key_file=tmp_path / "missing.key"
        )


async def test_anthropic_key_goes_in_x_api_key_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        ScriptedLM(default=Reply.error(401, f"invalid x-api-key {KEY}")) as server,
        AnthropicChat(model="claude-test", base_url=server.url, api_key=KEY) as lm,
    ):
        with pytest.raises(LMAuthError) as caught:
            await lm.acomplete(ask())
    assert server.requests[0].headers["x-api-key"] == KEY
    assert "authorization" not in server.requests[0].headers
    assert_clean(str(caught.value))
    assert_clean(caplog.text)
    assert_clean(repr(lm))


def test_credentials_cannot_be_smuggled_as_parameters() -> None:
    with pytest.raises(ConfigurationError):
        OpenAIChat(model="m", params={"api_key": KEY})
