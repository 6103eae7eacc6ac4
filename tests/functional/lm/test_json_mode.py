"""Structured output: the response_format forms and the auto fallback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.errors import LMServerError
from dspex.programs.lm import Message, OpenAIChat, ResponseFormat, RetryPolicy

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["label"],
}
FORMAT = ResponseFormat(name="sentiment", json_schema=SCHEMA)
# What llama-cpp-python answers to OpenAI's json_schema form.
LLAMA_CPP_REJECTION = (
    "1 validation error for CreateChatCompletionRequest\n"
    "response_format.type\n  Input should be 'text' or 'json_object' "
    "[type=literal_error, input_value='json_schema', input_type=str]"
)


def ask(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


def like_llama_cpp(request: RecordedRequest) -> Reply:
    fmt = request.json.get("response_format")
    if fmt is not None and fmt["type"] == "json_schema":
        return Reply.error(500, LLAMA_CPP_REJECTION)
    return Reply.completion('{"label": "positive"}')


def sent_format(request: RecordedRequest) -> Any:
    return request.json.get("response_format")


def client(server: ScriptedLM, **options: Any) -> OpenAIChat:
    settings: dict[str, Any] = {
        "cache": None,
        "retry": RetryPolicy(max_attempts=2, base_delay_s=0.01),
        **options,
    }
    return OpenAIChat(model="scripted-model", base_url=server.openai_url, **settings)


async def test_auto_falls_back_to_json_object_schema_and_remembers_it() -> None:
    async with ScriptedLM(responder=like_llama_cpp) as server, client(server) as lm:
        first = await lm.acomplete(ask("I love it"), response_format=FORMAT)
        assert [sent_format(r)["type"] for r in server.requests] == ["json_schema", "json_object"]
        assert sent_format(server.requests[1]) == {"type": "json_object", "schema": SCHEMA}
        assert lm.detected_json_mode == "json_object_schema"

        second = await lm.acomplete(ask("I hate it"), response_format=FORMAT)
    assert json.loads(first.text) == json.loads(second.text) == {"label": "positive"}
    assert len(server.requests) == 3
    assert sent_format(server.requests[2]) == {"type": "json_object", "schema": SCHEMA}
    # The rejected form was not a provider failure: nothing was retried or tripped.
    assert lm.stats.retries == 0
    assert lm.breaker_state == "closed"


async def test_auto_detects_once_under_concurrency() -> None:
    async with ScriptedLM(responder=like_llama_cpp) as server, client(server) as lm:
        await asyncio.gather(
            *(lm.acomplete(ask(f"text {i}"), response_format=FORMAT) for i in range(20))
        )
    kinds = [sent_format(r)["type"] for r in server.requests]
    assert kinds.count("json_schema") == 1
    assert len(kinds) == 21


async def test_calls_queued_behind_detection_then_run_concurrently() -> None:
    # Each answer takes a while: calls that overlap show as several at once on
    # the server. The ones that waited for the detection must not then take
    # turns (with a 100 ms LM, 320 waiting calls took 32 s to get through).
    def slow_like_llama_cpp(request: RecordedRequest) -> Reply:
        reply = like_llama_cpp(request)
        return dataclasses.replace(reply, delay_s=0.5) if reply.status == 200 else reply

    async with ScriptedLM(responder=slow_like_llama_cpp) as server, client(server) as lm:
        await asyncio.gather(
            *(lm.acomplete(ask(f"text {i}"), response_format=FORMAT) for i in range(10))
        )
    assert lm.detected_json_mode == "json_object_schema"
    assert len(server.requests) == 11
    assert server.max_concurrent > 1


async def test_auto_keeps_json_schema_when_the_endpoint_accepts_it() -> None:
    async with (
        ScriptedLM(default=Reply.completion('{"label": "negative"}')) as server,
        client(server, strict_json_schema=True) as lm,
    ):
        await lm.acomplete(ask("meh"), response_format=FORMAT)
        await lm.acomplete(ask("bah"), response_format=FORMAT)
    assert lm.detected_json_mode == "json_schema"
    assert [sent_format(r) for r in server.requests] == [
        {
            "type": "json_schema",
            "json_schema": {"name": "sentiment", "schema": SCHEMA, "strict": True},
        }
    ] * 2


async def test_auto_ends_at_plain_json_object() -> None:
    def rejects_schemas(request: RecordedRequest) -> Reply:
        if "schema" in json.dumps(sent_format(request)):
            return Reply.error(400, "response_format: unsupported key")
        return Reply.completion("{}")

    async with ScriptedLM(responder=rejects_schemas) as server, client(server) as lm:
        await lm.acomplete(ask("x"), response_format=FORMAT)
    assert [sent_format(r) for r in server.requests][-1] == {"type": "json_object"}
    assert lm.detected_json_mode == "json_object"


async def test_an_unrelated_server_error_does_not_decide_the_mode() -> None:
    async with (
        ScriptedLM(default=Reply.error(500, "CUDA out of memory")) as server,
        client(server) as lm,
    ):
        with pytest.raises(LMServerError):
            await lm.acomplete(ask("x"), response_format=FORMAT)
    assert lm.detected_json_mode is None
    assert [sent_format(r)["type"] for r in server.requests] == ["json_schema", "json_schema"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("json_object_schema", {"type": "json_object", "schema": SCHEMA}),
        ("json_object", {"type": "json_object"}),
        (
            "json_schema",
            {
                "type": "json_schema",
                "json_schema": {"name": "sentiment", "schema": SCHEMA, "strict": False},
            },
        ),
    ],
)
async def test_a_fixed_mode_sends_its_form_directly(mode: str, expected: dict[str, Any]) -> None:
    async with (
        ScriptedLM(default=Reply.completion("{}")) as server,
        client(server, json_mode=mode) as lm,
    ):
        await lm.acomplete(ask("x"), response_format=FORMAT)
    assert [sent_format(r) for r in server.requests] == [expected]
    assert lm.dump_state()["json_mode"] == mode


async def test_a_fixed_json_schema_mode_does_not_fall_back() -> None:
    async with (
        ScriptedLM(responder=like_llama_cpp) as server,
        client(server, json_mode="json_schema") as lm,
    ):
        with pytest.raises(LMServerError, match="validation error"):
            await lm.acomplete(ask("x"), response_format=FORMAT)
    assert {sent_format(r)["type"] for r in server.requests} == {"json_schema"}
