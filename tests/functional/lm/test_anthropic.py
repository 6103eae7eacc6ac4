"""AnthropicChat speaks the Messages API and maps its errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.scripted_lm import DEFAULT_TEXT, Reply, ScriptedLM
from dspex.errors import (
    LMAuthError,
    LMBadRequestError,
    LMRateLimitError,
    LMResponseError,
    LMServerError,
)
from dspex.programs.lm import AnthropicChat, Message, ResponseFormat, RetryPolicy

FAST_RETRY = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02)


def client(server: ScriptedLM, **options: Any) -> AnthropicChat:
    settings: dict[str, Any] = {"retry": FAST_RETRY, "cache": None, "api_key": "sk-ant", **options}
    return AnthropicChat(model="claude-test", base_url=server.url, **settings)


CONVERSATION = [
    Message(role="system", content="You are terse."),
    Message(role="user", content="Hi"),
    Message(role="assistant", content="Hello."),
    Message(role="user", content="Again?"),
]


async def test_happy_path_uses_the_messages_api() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        response = await lm.acomplete(CONVERSATION, stop=["END"], temperature=0.2)
    assert response.text == DEFAULT_TEXT
    assert response.finish_reason == "end_turn"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (11, 7)
    assert response.provider == "anthropic"
    sent = server.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["x-api-key"] == "sk-ant"
    body = sent.json
    assert body["system"] == "You are terse."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["max_tokens"] == 1024
    assert body["temperature"] == 0.2
    assert body["stop_sequences"] == ["END"]


async def test_response_format_puts_the_schema_in_the_system_prompt() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    async with (
        ScriptedLM(default=Reply.completion('{"answer": "4"}')) as server,
        client(server) as lm,
    ):
        response = await lm.acomplete(
            CONVERSATION, response_format=ResponseFormat(json_schema=schema)
        )
    assert json.loads(response.text) == {"answer": "4"}
    system = server.requests[0].json["system"]
    assert system.startswith("You are terse.")
    assert json.dumps(schema, separators=(",", ":"), sort_keys=True) in system
    assert "response_format" not in server.requests[0].json


async def test_n_choices_are_separate_calls() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        response = await lm.acomplete(CONVERSATION, n=2, temperature=1.0)
    assert len(server.requests) == 2
    assert response.choices == (DEFAULT_TEXT, DEFAULT_TEXT)
    assert response.usage.completion_tokens == 14


@pytest.mark.parametrize(
    ("status", "error", "attempts"),
    [
        (429, LMRateLimitError, 2),
        (529, LMServerError, 2),
        (500, LMServerError, 2),
        (401, LMAuthError, 1),
        (403, LMAuthError, 1),
        (400, LMBadRequestError, 1),
    ],
)
async def test_errors_are_mapped(status: int, error: type[Exception], attempts: int) -> None:
    async with (
        ScriptedLM(default=Reply.error(status, "scripted")) as server,
        client(server) as lm,
    ):
        with pytest.raises(error) as caught:
            await lm.acomplete(CONVERSATION)
    assert len(server.requests) == attempts
    assert "api_error: scripted" in str(caught.value)


@pytest.mark.parametrize(
    "reply",
    [
        Reply.malformed(),
        Reply.completion(""),
        Reply(body={"type": "message", "content": [{"type": "tool_use", "id": "x"}]}),
        Reply(body={"type": "message"}),
    ],
    ids=["malformed", "empty", "no-text", "no-content"],
)
async def test_unusable_answers_are_response_errors(reply: Reply) -> None:
    async with ScriptedLM(default=reply) as server, client(server) as lm:
        with pytest.raises(LMResponseError):
            await lm.acomplete(CONVERSATION)


def test_state_has_the_default_max_tokens_and_no_key() -> None:
    lm = AnthropicChat(model="claude-test", api_key="sk-ant-secret")
    state = lm.dump_state()
    assert state["provider"] == "anthropic"
    assert state["base_url"] == "https://api.anthropic.com"
    assert state["params"]["max_tokens"] == 1024
    assert "sk-ant-secret" not in json.dumps(state)


async def test_one_failed_choice_fails_the_call_with_a_plain_lm_error() -> None:
    async with ScriptedLM() as server, client(server, retry=RetryPolicy(max_attempts=1)) as lm:
        server.script(Reply(), Reply.error(400, "bad"))
        with pytest.raises(LMBadRequestError, match="bad"):
            await lm.acomplete(CONVERSATION, n=2, temperature=1.0)
