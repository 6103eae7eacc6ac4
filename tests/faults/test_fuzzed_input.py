"""Fuzzed records on a worker's input topics: every one is accounted for, the worker serves on.

Hypothesis generates bursts of records for the inference requests, the
evaluation requests and the programs topic: arbitrary bytes, valid records,
and valid records broken one way each (a field dropped, retyped or added, the
schema renamed, the JSON cut short, bytes that are not UTF-8), with arbitrary
keys. One real worker on a real broker serves every burst. After each, every
offset must be accounted for: a dead letter naming it or the answer to the id
it carried (requests), a logged skip naming it or a record the wire format
reads (programs). Each burst ends with a valid record, which must be answered:
nothing got stuck behind the garbage.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import dspex
from bench._deployment import read_json_records, write_topology
from dspex._local._process import free_port
from dspex.errors import WireFormatError
from dspex.programs.state import ProgramSpec
from dspex.streams.records import ProgramRecord, decode, encode
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.streams.worker.app import evaluation_group, inference_group
from dspex.topologies.settings import TopicSettings
from dspex.topologies.topology import Topology
from tests.support.deployment import (
    WorkerProcess,
    scripted_lm_process,
    start_dspex,
    start_worker,
    stop_worker,
)
from tests.support.gate import at_least, committed, eventually
from tests.support.metrics import counter_total, scrape

pytestmark = pytest.mark.kafka

#: Records per burst (one Hypothesis example), and bursts per topic. The first
#: example Hypothesis draws is its simplest (every record empty bytes); the
#: others vary.
RECORDS = 40
FUZZ = settings(
    max_examples=6,
    phases=[Phase.generate],  # no shrinking: each step would be another burst
    suppress_health_check=list(HealthCheck),
    database=None,
    deadline=None,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def inference_request(request_id: str) -> dict[str, Any]:
    return {
        "schema": "dspex.inference.request/v1",
        "request_id": request_id,
        "program_id": "echo",
        "inputs": {"question": "why?"},
    }


def eval_request(run_id: str) -> dict[str, Any]:
    return {
        "schema": "dspex.eval.request/v1",
        "run_id": run_id,
        "run_size": 1,
        "index": 0,
        "program_id": "echo",
        "example": {"question": "why?", "answer": "ok"},
        "input_keys": ["question"],
        "metric": "exact_match",
    }


def program_record(program_id: str) -> dict[str, Any]:
    record = ProgramRecord(program_id=program_id, version=1, spec=ProgramSpec.from_program(ECHO))
    body: dict[str, Any] = json.loads(encode(record))
    return body


ECHO = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())


def near_valid(valid: Callable[[str], dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Record values: garbage, a valid record, or a valid record broken one way."""

    @st.composite
    def values(draw: st.DrawFn) -> bytes:
        kind = draw(
            st.sampled_from(["bytes", "valid", "drop", "retype", "extra", "schema", "cut", "utf8"])
        )
        if kind == "bytes":
            return draw(st.binary(max_size=300))
        body = valid(uuid.uuid4().hex)
        field = draw(st.sampled_from(sorted(body)))
        if kind == "drop":
            del body[field]
        elif kind == "retype":
            body[field] = draw(json_values)
        elif kind == "extra":
            body[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        elif kind == "schema":
            body["schema"] = draw(st.text(max_size=40))
        text = json.dumps(body).encode()
        if kind == "cut":
            return text[: draw(st.integers(min_value=0, max_value=len(text) - 1))]
        if kind == "utf8":
            at = draw(st.integers(min_value=0, max_value=len(text)))
            return text[:at] + b"\xff\xfe" + text[at:]
        return text

    return values()


def bursts(
    valid: Callable[[str], dict[str, Any]], keys: st.SearchStrategy[bytes | None]
) -> st.SearchStrategy[list[tuple[bytes | None, bytes]]]:
    return st.lists(st.tuples(keys, near_valid(valid)), min_size=RECORDS, max_size=RECORDS)


def carried_id(value: bytes, field: str) -> str | None:
    """The id a record carries in ``field``, if it is a JSON object with a string one."""
    try:
        body = json.loads(value)
    except ValueError:
        return None
    found = body.get(field) if isinstance(body, dict) else None
    return found if isinstance(found, str) else None


@dataclass
class Deployment:
    bootstrap: str
    names: TopicNames
    topology: Topology
    worker: WorkerProcess
    optimizer: WorkerProcess
    optimizer_metrics_port: int


@pytest.fixture(scope="module")
def deployment(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A worker and the optimizer service serving ``echo``; one partition per topic."""
    prefix = f"z{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    port = free_port()
    with scripted_lm_process(text=json.dumps({"answer": "ok"})) as lm_url:
        path = write_topology(
            tmp_path_factory.mktemp("fuzz") / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=lm_url,
            partitions=1,
            optimizer={"metrics_port": port},
        )

        async def set_up() -> None:
            await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=1))
            await register_program(kafka_bootstrap, names, "echo", ProgramSpec.from_program(ECHO))

        asyncio.run(set_up())
        worker = start_worker(path, "fuzzed")
        optimizer = start_dspex(["optimizer", "serve", str(path)], "optimizer-fuzzed")
        try:
            asyncio.run(eventually(lambda: _serves_metrics(port)))
            yield Deployment(
                kafka_bootstrap,
                names,
                Topology.model_validate({"name": prefix}),
                worker,
                optimizer,
                port,
            )
        finally:
            outcomes = [stop_worker(worker), stop_worker(optimizer)]
        for code, log in outcomes:
            assert code == 0, log[-3000:]


async def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]
) -> list[int]:
    """Send ``records`` to partition 0 of ``topic`` in one burst; their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=key, partition=0) for key, value in records]
        return [(await delivery).offset for delivery in sent]
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Answered:
    """An input topic whose records are answered on another, by an id they carry."""

    topic: Callable[[TopicNames], str]
    group: Callable[[Topology], str]
    answers: Callable[[TopicNames], str]
    id_field: str
    valid: Callable[[str], dict[str, Any]]


async def serve_requests(
    deployment: Deployment, records: list[tuple[bytes | None, bytes]], channel: Answered
) -> None:
    """A burst on a requests topic; each record dead-lettered or answered by its id."""
    bootstrap, names = deployment.bootstrap, deployment.names
    topic, answers, id_field = channel.topic(names), channel.answers(names), channel.id_field
    group = channel.group(deployment.topology)
    before = {answer.get(id_field) for answer in await read_json_records(bootstrap, answers)}
    last = uuid.uuid4().hex
    records = [*records, (b"echo", json.dumps(channel.valid(last)).encode())]
    offsets = await produce(bootstrap, topic, records)
    await eventually(lambda: at_least(committed(bootstrap, group, topic), offsets[-1] + 1))
    letters = await read_json_records(bootstrap, deployment.names.inference_dlq)
    lettered = {letter["offset"] for letter in letters if letter["topic"] == topic}
    answered = {answer.get(id_field) for answer in await read_json_records(bootstrap, answers)}
    assert last in answered, "the valid record after the burst got no answer"
    carried = [carried_id(value, id_field) for _, value in records]
    missing = [
        (offset, value[:80])
        for offset, (_, value), known in zip(offsets, records, carried, strict=True)
        if offset not in lettered and known is not None and known not in answered
    ]
    assert not missing, f"{len(missing)} records neither answered nor dead-lettered: {missing[:5]}"
    # A valid record without an id is answered under one the worker made up.
    anonymous = [
        offset
        for offset, known in zip(offsets, carried, strict=True)
        if offset not in lettered and known is None
    ]
    made_up = answered - before - set(carried) - {None}
    assert len(made_up) == len(anonymous), (
        f"{len(anonymous)} records without an id were not dead-lettered, "
        f"{len(made_up)} answers carry an id the worker made up"
    )
    assert all(letter["reason"] and letter["detail"] for letter in letters)


INFERENCE = Answered(
    topic=lambda names: names.inference_requests,
    group=inference_group,
    answers=lambda names: names.inference_results,
    id_field="request_id",
    valid=inference_request,
)
EVALUATION = Answered(
    topic=lambda names: names.eval_requests,
    group=evaluation_group,
    answers=lambda names: names.eval_scores,
    id_field="run_id",
    valid=eval_request,
)
KEYS = st.none() | st.binary(max_size=40)


@FUZZ
@given(records=bursts(inference_request, KEYS))
def test_every_fuzzed_inference_request_is_answered_or_dead_lettered(
    records: list[tuple[bytes | None, bytes]], deployment: Deployment
) -> None:
    asyncio.run(serve_requests(deployment, records, INFERENCE))


@FUZZ
@given(records=bursts(eval_request, KEYS))
def test_every_fuzzed_eval_request_is_scored_or_dead_lettered(
    records: list[tuple[bytes | None, bytes]], deployment: Deployment
) -> None:
    asyncio.run(serve_requests(deployment, records, EVALUATION))


def optimizer_group(topology: Topology) -> str:
    """The optimizer service's consumer group (its Faust app id)."""
    return f"{topology.name}-optimizer"


def control_command(command_id: str) -> dict[str, Any]:
    """A command the service can only refuse: a rollback of a program nobody registered."""
    return {
        "schema": "dspex.control/v1",
        "command_id": command_id,
        "command": "rollback",
        "program_id": f"absent-{command_id[:8]}",
    }


CONTROL = Answered(
    topic=lambda names: names.control,
    group=optimizer_group,
    answers=lambda names: names.candidates,
    id_field="command_id",
    valid=control_command,
)


@FUZZ
@given(records=bursts(control_command, KEYS))
def test_every_fuzzed_control_command_is_journaled_or_dead_lettered(
    records: list[tuple[bytes | None, bytes]], deployment: Deployment
) -> None:
    asyncio.run(serve_requests(deployment, records, CONTROL))


def feedback(request_id: str) -> dict[str, Any]:
    return {"schema": "dspex.feedback/v1", "request_id": request_id, "score": 0.5}


def feedback_read(port: int) -> float:
    """Feedback records the optimizer service has taken in, by its /metrics."""
    return counter_total(port, "dspex_optimizer_feedback")


async def serve_feedback(deployment: Deployment, records: list[tuple[bytes | None, bytes]]) -> None:
    """A burst on the feedback topic; each record dead-lettered or counted as read."""
    bootstrap, names, port = (
        deployment.bootstrap,
        deployment.names,
        deployment.optimizer_metrics_port,
    )
    before = feedback_read(port)
    records = [*records, (b"echo", json.dumps(feedback(uuid.uuid4().hex)).encode())]
    offsets = await produce(bootstrap, names.feedback, records)
    group = optimizer_group(deployment.topology)
    await eventually(lambda: at_least(committed(bootstrap, group, names.feedback), offsets[-1] + 1))
    letters = await read_json_records(bootstrap, names.inference_dlq)
    lettered = {letter["offset"] for letter in letters if letter["topic"] == names.feedback}
    burst_lettered = lettered & set(offsets)
    read = feedback_read(port) - before
    assert offsets[-1] not in lettered, "the valid feedback record was dead-lettered"
    assert read + len(burst_lettered) == len(records), (
        f"{len(records)} feedback records: {read:.0f} read, {len(burst_lettered)} dead-lettered"
    )


@FUZZ
@given(records=bursts(feedback, KEYS))
def test_every_fuzzed_feedback_record_is_read_or_dead_lettered(
    records: list[tuple[bytes | None, bytes]], deployment: Deployment
) -> None:
    asyncio.run(serve_feedback(deployment, records))


def reads_as_program(value: bytes) -> bool:
    try:
        decode(value, expect=ProgramRecord)
    except WireFormatError:
        return False
    return True


async def serve_programs(deployment: Deployment, records: list[tuple[bytes | None, bytes]]) -> None:
    """A burst on the programs topic, then a program registered after it is served."""
    bootstrap, names = deployment.bootstrap, deployment.names
    offsets = await produce(bootstrap, names.programs, records)
    after = f"after-{uuid.uuid4().hex[:8]}"
    await register_program(bootstrap, names, after, ProgramSpec.from_program(ECHO))
    request_id = uuid.uuid4().hex
    body = {**inference_request(request_id), "program_id": after}
    await produce(
        bootstrap, names.inference_requests, [(after.encode(), json.dumps(body).encode())]
    )
    await eventually(lambda: _answered_ok(bootstrap, names.inference_results, request_id))
    skipped = {
        int(offset)
        for offset in re.findall(
            rf"skipping invalid program record at {re.escape(names.programs)}\[0\]@(\d+)",
            deployment.worker.output(),
        )
    }
    missing = [
        (offset, value[:80])
        for offset, (_, value) in zip(offsets, records, strict=True)
        if offset not in skipped and not reads_as_program(value)
    ]
    assert not missing, f"{len(missing)} program records neither read nor logged: {missing[:5]}"


@FUZZ
@given(records=bursts(program_record, st.binary(min_size=1, max_size=40)))  # compacted: keyed
def test_every_fuzzed_program_record_is_read_or_skipped_loudly(
    records: list[tuple[bytes | None, bytes]], deployment: Deployment
) -> None:
    asyncio.run(serve_programs(deployment, records))


async def _answered_ok(bootstrap: str, topic: str, request_id: str) -> bool:
    results = await read_json_records(bootstrap, topic)
    return any(
        result.get("request_id") == request_id and result.get("status") == "ok"
        for result in results
    )


async def _serves_metrics(port: int) -> bool:
    try:
        await asyncio.to_thread(scrape, port)
    except OSError:
        return False
    return True
