"""A real worker process serving a program with the real local LM over real Kafka.

Requests are produced as raw JSON bytes with aiokafka and results read back the
same way: the path any non-Python client takes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import dspex
from dspex._local._process import free_port
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import start_worker, stop_worker

LABELS = ("positive", "negative", "neutral")


class Classify(dspex.Signature):
    """Classify the sentiment of the review."""

    review: str = dspex.InputField()
    sentiment: Literal["positive", "negative", "neutral"] = dspex.OutputField()


def classifier_spec(instructions: str | None = None) -> ProgramSpec:
    signature = Classify if instructions is None else Classify.with_instructions(instructions)
    return ProgramSpec.from_program(dspex.Predict(signature, adapter=dspex.JSONAdapter()))


@pytest.fixture
def deployment(tmp_path: Path, kafka_bootstrap: str, local_lm_url: str) -> tuple[Path, TopicNames]:
    prefix = f"w{uuid.uuid4().hex[:8]}"
    topology = {
        "name": prefix,
        "kafka": {"bootstrap_servers": kafka_bootstrap},
        "topics": {"prefix": prefix, "partitions": 2},
        "lms": {"local": {"model": "smollm2-135m-instruct", "base_url": local_lm_url}},
        "default_lm": "local",
        "inflight_limit": 4,
        "request_timeout_s": 60,
        "metrics_port": free_port(),
    }
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology))
    asyncio.run(ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=2)))
    return path, TopicNames(prefix)


async def produce_raw(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def collect(
    bootstrap: str, topics: list[str], wanted: int, timeout_s: float = 180
) -> list[tuple[str, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[tuple[str, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(found) < wanted and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                found += [(r.topic, json.loads(r.value or b"{}")) for r in records]
    finally:
        await consumer.stop()
    return found


def request(program_id: str, inputs: Any, **extra: Any) -> tuple[bytes, bytes, str]:
    request_id = uuid.uuid4().hex
    body = {
        "schema": "dspex.inference.request/v1",
        "request_id": request_id,
        "program_id": program_id,
        "inputs": inputs,
        **extra,
    }
    return program_id.encode(), json.dumps(body).encode(), request_id


async def test_worker_answers_raw_json_requests_and_accounts_for_bad_ones(
    deployment: tuple[Path, TopicNames], kafka_bootstrap: str
) -> None:
    topology, names = deployment
    await register_program(kafka_bootstrap, names, "classify", classifier_spec())
    worker = start_worker(topology, "worker-a")
    try:
        good = [request("classify", {"review": text}) for text in ("Great!", "Awful.", "A box.")]
        pinned = request("classify", {"review": "Fine."}, program_version=1)
        unknown = request("nope", {"review": "x"})
        missing = request("classify", {"text": "wrong field"})
        garbage = (b"classify", b"\xff\xfe not json")
        wrong_schema = (b"classify", b'{"schema": "dspex.inference.request/v9", "inputs": {}}')
        huge = request("classify", {"review": "x" * 1_020_000})
        broken = request("classify", ["inputs", "must", "be", "an", "object"])
        await produce_raw(
            kafka_bootstrap,
            names.inference_requests,
            [(k, v) for k, v, _ in [*good, pinned, unknown, missing, huge, broken]]
            + [garbage, wrong_schema],
        )
        found = await collect(
            kafka_bootstrap, [names.inference_results, names.inference_dlq], wanted=11
        )
        port = yaml.safe_load(topology.read_text())["metrics_port"]
        async with httpx.AsyncClient(timeout=10) as http:
            metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        code, output = stop_worker(worker)
    assert code == 0, output
    results = {r["request_id"]: r for topic, r in found if topic == names.inference_results}
    letters = [r for topic, r in found if topic == names.inference_dlq]
    for _, _, request_id in [*good, pinned]:
        result = results[request_id]
        assert result["status"] == "ok", result
        assert result["outputs"]["sentiment"] in LABELS
        assert result["program_version"] == 1
        assert result["worker_id"] == "worker-a"
        assert result["usage"]["calls"] >= 1
    assert results[unknown[2]]["error"]["type"] == "unknown_program"
    assert results[missing[2]]["error"]["type"] == "invalid_inputs"
    # Breaks the schema but names its request: a dead letter, and an answer to its client.
    assert results[broken[2]]["error"]["type"] == "invalid_request"
    assert "inputs" in results[broken[2]]["error"]["message"]
    reasons = {letter["reason"]: letter for letter in letters}
    assert sorted(reasons) == sorted(
        [reasons_for_garbage(reasons), "unknown_schema", "too_large", "invalid_record"]
    )
    assert base64.b64decode(reasons[reasons_for_garbage(reasons)]["value_b64"]) == garbage[1]
    assert all(letter["topic"] == names.inference_requests for letter in letters)
    assert samples(metrics, "dspex_inference_requests_total", status="ok") == 4
    assert samples(metrics, "dspex_inference_requests_total", error_type="unknown_program") == 1
    assert samples(metrics, "dspex_inference_dead_letters_total") == 4
    assert samples(metrics, "dspex_inference_requests_total", error_type="invalid_request") == 1
    assert samples(metrics, "dspex_inference_request_duration_seconds_count") == 7
    assert samples(metrics, "dspex_lm_calls_total") >= 4
    assert samples(metrics, "dspex_inference_inflight_requests") == 0
    assert samples(metrics, "dspex_registry_programs") == 1


def reasons_for_garbage(reasons: dict[str, Any]) -> str:
    return "invalid_utf8" if "invalid_utf8" in reasons else "invalid_json"


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_a_new_version_applies_without_restart(
    deployment: tuple[Path, TopicNames], kafka_bootstrap: str
) -> None:
    topology, names = deployment
    await register_program(kafka_bootstrap, names, "classify", classifier_spec())
    worker = start_worker(topology, "worker-b")
    try:
        first = request("classify", {"review": "Nice."})
        await produce_raw(kafka_bootstrap, names.inference_requests, [first[:2]])
        assert await collect(kafka_bootstrap, [names.inference_results], wanted=1)
        await register_program(
            kafka_bootstrap, names, "classify", classifier_spec("Label the review's mood.")
        )
        # The worker follows the programs topic while it serves: probe until an
        # unpinned request is answered by the new version.
        probes = 0
        while True:
            probes += 1
            probe = request("classify", {"review": f"Probe {probes}."})
            await produce_raw(kafka_bootstrap, names.inference_requests, [probe[:2]])
            answered = await collect(kafka_bootstrap, [names.inference_results], 1 + probes)
            version = {r["request_id"]: r["program_version"] for _, r in answered}[probe[2]]
            if version == 2:
                break
            assert version == 1
        later = [request("classify", {"review": f"Review {i}"}) for i in range(3)]
        pinned = request("classify", {"review": "Old."}, program_version=1)
        await produce_raw(
            kafka_bootstrap, names.inference_requests, [(k, v) for k, v, _ in [*later, pinned]]
        )
        found = await collect(kafka_bootstrap, [names.inference_results], wanted=5 + probes)
    finally:
        code, output = stop_worker(worker)
    assert code == 0, output
    versions = {r["request_id"]: r["program_version"] for _, r in found}
    assert versions[first[2]] == 1
    assert all(versions[r[2]] == 2 for r in later)
    assert versions[pinned[2]] == 1
