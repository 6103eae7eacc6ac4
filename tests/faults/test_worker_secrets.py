"""A worker's LM key reaches the LM's request headers and nothing else.

The worker reads its key from the environment (``api_key_env``) and from a
file (``api_key_file``, a second endpoint); the scripted LM (loopback, the one
test double) answers with errors that echo the key it was sent: a 401, a 500
that is retried until attempts run out, and a 200 whose body is unusable. The
broker and the worker process are real. Afterwards every record on every topic
of the deployment, the worker's whole log output and its /metrics page are
searched for the keys.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

import dspex
from bench._deployment import produce_backlog, write_topology
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex._local._process import free_port
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import start_worker, stop_worker

pytestmark = pytest.mark.kafka

ENV_KEY = "sk-env-" + uuid.uuid4().hex
FILE_KEY = "sk-file-" + uuid.uuid4().hex
PER_PROGRAM = 12


def echoing(request: RecordedRequest) -> Reply:
    """Errors that quote the key they were sent, by question number."""
    key = request.headers.get("authorization", "").removeprefix("Bearer ")
    asked = re.search(r"question (\d+)", json.dumps(request.json))
    number = int(asked.group(1)) if asked else 3
    quoted = f"Incorrect API key provided: {key}. You can find your API key at ..."
    if number % 4 == 0:
        return Reply.error(401, quoted)
    if number % 4 == 1:
        return Reply.error(500, quoted)
    if number % 4 == 2:
        return Reply(body=f'{{"choices": "not a list, {key}"}}')
    return Reply.completion(json.dumps({"answer": "ok"}))


async def everything_on(bootstrap: str, prefix: str) -> list[bytes]:
    """Keys and values of every record on every topic of the deployment."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[bytes] = []
    try:
        consumer.subscribe(pattern=f"^{prefix}\\..*")
        while True:
            batches = await consumer.getmany(timeout_ms=3000)
            if not batches:
                return found
            for records in batches.values():
                found += [(r.key or b"") + b"|" + (r.value or b"") for r in records]
    finally:
        await consumer.stop()


async def results_for(bootstrap: str, topic: str, count: int) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: dict[str, dict[str, Any]] = {}
    try:
        while len(found) < count:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    body = json.loads(record.value or b"{}")
                    found[body["request_id"]] = body
    finally:
        await consumer.stop()
    return list(found.values())


async def test_the_keys_appear_in_no_topic_log_line_or_metric(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPEX_TEST_LM_KEY", ENV_KEY)  # the worker process inherits it
    key_file = tmp_path / "lm.key"
    key_file.write_text(FILE_KEY + "\n")
    prefix = f"s{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    metrics_port = free_port()
    async with ScriptedLM(responder=echoing) as server:
        endpoint = {"model": "scripted", "base_url": server.openai_url, "max_attempts": 2}
        topology = write_topology(
            tmp_path / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=server.openai_url,
            partitions=2,
            metrics_port=metrics_port,
            lms={
                "from_env": {**endpoint, "api_key_env": "DSPEX_TEST_LM_KEY"},
                "from_file": {**endpoint, "api_key_file": str(key_file)},
            },
            default_lm="from_env",
            program_lms={"filed": "from_file"},
        )
        await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=2))
        program = ProgramSpec.from_program(
            dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
        )
        for program_id in ("envy", "filed"):
            await register_program(kafka_bootstrap, names, program_id, program)
            await produce_backlog(
                kafka_bootstrap, names.inference_requests, program_id=program_id, count=PER_PROGRAM
            )
        worker = start_worker(topology, "secretive")
        try:
            results = await asyncio.wait_for(
                results_for(kafka_bootstrap, names.inference_results, 2 * PER_PROGRAM), 300
            )
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        finally:
            _, log = stop_worker(worker)
        sent = {
            r.headers.get("authorization")
            for r in server.requests
            if r.path.endswith("/completions")
        }
    # The keys did go where they belong, and the LM did echo them back.
    assert sent == {f"Bearer {ENV_KEY}", f"Bearer {FILE_KEY}"}
    # Three questions in four get an echoing error, and so an error result.
    statuses = Counter(r["status"] for r in results)
    assert statuses == {"error": 2 * PER_PROGRAM * 3 // 4, "ok": 2 * PER_PROGRAM // 4}, statuses
    records = await everything_on(kafka_bootstrap, prefix)
    assert records, "the deployment's topics hold its records"
    for key in (ENV_KEY, FILE_KEY):
        leaked = [record[:300] for record in records if key.encode() in record]
        assert not leaked, f"a key is on a topic: {leaked[:2]}"
        assert key not in log, "a key is in the worker's log"
        assert key not in metrics, "a key is in /metrics"
