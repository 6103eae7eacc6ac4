"""InferenceHandler without Faust or Kafka: bytes in, the records to produce out.

The handler is the worker's hot path; the agent only feeds it and produces
what it returns. Its LM is the scripted server on loopback, so the real LM
client code runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from bench.scripted_lm import Reply, ScriptedLM
from dspex.programs.lm import CircuitBreakerPolicy, RetryPolicy
from dspex.programs.state import ProgramSpec
from dspex.streams.catalog import ProgramCatalog
from dspex.streams.records import ProgramRecord
from dspex.streams.topics import TopicNames
from dspex.streams.worker.inference import InferenceHandler, Origin

NAMES = TopicNames("unit")
ORIGIN = Origin("unit.inference.requests", 0, 42)


def request(**fields: Any) -> bytes:
    body = {
        "schema": "dspex.inference.request/v1",
        "request_id": "r-1",
        "program_id": "echo",
        "inputs": {"question": "Why?"},
        **fields,
    }
    return json.dumps(body).encode()


@pytest.fixture
async def server() -> AsyncIterator[ScriptedLM]:
    async with ScriptedLM(default=Reply.completion(json.dumps({"answer": "because"}))) as lm:
        yield lm


def handler_for(server: ScriptedLM, **lm_options: Any) -> tuple[InferenceHandler, dspex.LM]:
    catalog = ProgramCatalog()
    program = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    catalog.apply(
        ProgramRecord(program_id="echo", version=3, spec=ProgramSpec.from_program(program))
    )
    lm = dspex.OpenAIChat(model="scripted", base_url=server.openai_url, cache=None, **lm_options)
    handler = InferenceHandler(
        catalog=catalog,
        names=NAMES,
        worker_id="w-unit",
        lm_for=lambda program_id: lm if program_id == "echo" else None,
        request_timeout_s=30,
    )
    return handler, lm


async def test_a_request_gives_its_result_then_one_event_per_request_and_lm_call(
    server: ScriptedLM,
) -> None:
    handler, lm = handler_for(server)
    async with lm:
        out = await handler.handle(b"echo", request(), ORIGIN)
    assert [record.topic for record in out] == [
        NAMES.inference_results,
        NAMES.telemetry,
        NAMES.telemetry,
    ]
    result = json.loads(out[0].value)
    assert out[0].key == b"r-1"
    assert result["status"] == "ok"
    assert result["outputs"] == {"answer": "because"}
    assert result["program_version"] == 3
    assert result["worker_id"] == "w-unit"
    kinds = [json.loads(record.value)["kind"] for record in out[1:]]
    assert kinds == ["request", "lm_call"]


async def test_reply_to_sends_the_result_there(server: ScriptedLM) -> None:
    handler, lm = handler_for(server)
    async with lm:
        out = await handler.handle(b"echo", request(reply_to="my.replies"), ORIGIN)
    assert out[0].topic == "my.replies"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe", "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (json.dumps({"schema": "someone.else/v9"}).encode(), "unknown_schema"),
    ],
)
async def test_bytes_that_are_not_a_request_become_a_dead_letter_only(
    server: ScriptedLM, value: bytes, reason: str
) -> None:
    handler, lm = handler_for(server)
    async with lm:
        out = await handler.handle(b"k", value, ORIGIN)
    assert [record.topic for record in out] == [NAMES.inference_dlq]
    letter = json.loads(out[0].value)
    assert letter["reason"] == reason
    assert (letter["topic"], letter["partition"], letter["offset"]) == (ORIGIN.topic, 0, 42)
    assert len(server.requests) == 0


async def test_a_request_breaking_the_schema_also_answers_its_client(server: ScriptedLM) -> None:
    handler, lm = handler_for(server)
    async with lm:
        out = await handler.handle(b"echo", request(inputs="not an object"), ORIGIN)
    assert [record.topic for record in out] == [NAMES.inference_dlq, NAMES.inference_results]
    result = json.loads(out[1].value)
    assert (result["request_id"], result["status"]) == ("r-1", "error")
    assert result["error"]["type"] == "invalid_request"


async def test_an_unknown_program_is_an_error_result(server: ScriptedLM) -> None:
    handler, lm = handler_for(server)
    async with lm:
        out = await handler.handle(b"nope", request(program_id="nope"), ORIGIN)
    result = json.loads(out[0].value)
    assert result["status"] == "error"
    assert result["error"]["type"] == "unknown_program"


async def test_an_lm_that_stays_down_past_the_deadline_is_lm_unavailable(
    server: ScriptedLM,
) -> None:
    server.default = Reply.error(503, "down")
    handler, lm = handler_for(
        server,
        retry=RetryPolicy(max_attempts=None, base_delay_s=0.01, max_delay_s=0.05),
        circuit_breaker=CircuitBreakerPolicy(
            failure_threshold=2, recovery_timeout_s=3600, when_open="wait"
        ),
    )
    async with lm:
        out = await handler.handle(
            b"echo", request(deadline_ms=int((time.time() + 1.0) * 1000)), ORIGIN
        )
    result = json.loads(out[0].value)
    assert result["status"] == "error"
    assert result["error"]["type"] == "lm_unavailable"
    # The breaker held the request after it opened: the LM saw only the failures that opened it.
    assert len(server.requests) == 2
